//! Unpacking one layer tar into a directory, per the OCI layer rules, in one
//! streaming pass that also computes the layer's diff ID.
//!
//! What is written:
//!
//! - regular files (streamed, never whole in memory), directories,
//!   symlinks (target kept verbatim, never followed), hard links (to an
//!   earlier entry of the same layer), fifos;
//! - character and block devices only with [`UnpackOptions::as_root`];
//!   otherwise they are skipped and counted in [`UnpackReport::skipped`],
//!   so a caller can print one warning;
//! - ownership (numeric uid/gid) only with `as_root`; modes including
//!   setuid, setgid and sticky bits (applied after chown, which clears
//!   them); mtimes; `SCHILY.xattr.*` PAX records as extended attributes,
//!   best effort (failures are counted in [`UnpackReport::xattrs_failed`]).
//!   Directories get their mode, owner and times at the very end, deepest
//!   first, so a read-only directory still receives its content.
//! - whiteouts (`.wh.NAME`) and opaque markers (`.wh..wh..opq`) are kept as
//!   empty regular files: the directory is the layer's raw diff, and
//!   [`Store::export_layers`](crate::Store::export_layers) applies them.
//!
//! What is refused, with an [`Error::UnsafeEntry`] naming the entry:
//!
//! - a path with a `..` component (`layer entry "../../etc/passwd" escapes
//!   the layer directory`). A leading `/` is dropped instead, as Docker
//!   does: `/etc/passwd` is `etc/passwd` of the layer;
//! - a path whose parent is a symlink planted by an earlier entry (checked
//!   component by component with `lstat`, never following) or is not a
//!   directory;
//! - a hard link whose target escapes, goes through a symlink, is missing
//!   from the layer or is a directory.
//!
//! Missing parent directories are created `0755`. An entry replacing an
//! existing path removes it first (a directory over a directory merges);
//! files are created with `O_CREAT|O_EXCL`, which never follows a symlink.
//! The destination is assumed private to this unpack while it runs (haul
//! unpacks into a fresh temporary directory), so the `lstat` checks cannot
//! be raced. Entries naming the root itself (`./`) are ignored.
//!
//! `tar::Archive::unpack` is not used: its rules differ (it follows
//! existing symlinks for directories, applies no whiteout semantics, and
//! does not report skipped entries).

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use haul_oci::{Digest, Digester};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags, CWD};

use crate::error::{Error, Result};
use crate::writeback::EarlyWriteback;

/// The name of an opaque-directory marker.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// The prefix of a whiteout's name.
pub const WHITEOUT_PREFIX: &str = ".wh.";

const COPY_BUFFER: usize = 256 * 1024;

/// How to unpack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackOptions {
    /// Apply ownership and create device nodes (needs root). Defaults to
    /// whether the process runs as root; tests set it to exercise the other
    /// path.
    pub as_root: bool,
    /// Apply `SCHILY.xattr.*` records as extended attributes (best effort).
    pub xattrs: bool,
    /// How far a compressed layer may expand (see
    /// [`UnpackOptions::for_compressed_size`]).
    pub expansion: ExpansionLimit,
    /// Most bytes of tar stream to unpack; past that the unpack fails with
    /// [`Error::LayerTooLarge`] and leaves nothing. `None`: no limit.
    pub max_size: Option<u64>,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions {
            as_root: crate::running_as_root(),
            xattrs: true,
            expansion: ExpansionLimit::default(),
            max_size: None,
        }
    }
}

impl UnpackOptions {
    /// These options for a layer whose compressed blob has `size` bytes:
    /// `max_size` set from [`UnpackOptions::expansion`].
    pub fn for_compressed_size(&self, size: u64) -> UnpackOptions {
        UnpackOptions {
            max_size: Some(self.expansion.max_size(size)),
            ..self.clone()
        }
    }
}

/// How far one layer's compressed blob may expand when unpacked, against
/// decompression bombs (1 GiB of zeros gzips to ~1 MB). Real layers expand
/// 2-10x; the defaults are generous.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpansionLimit {
    /// Most tar bytes per compressed byte (default 100).
    pub ratio: u64,
    /// Always allowed, whatever the ratio says (default 64 MiB).
    pub floor: u64,
    /// Never allowed beyond (default 64 GiB).
    pub cap: u64,
}

impl Default for ExpansionLimit {
    fn default() -> Self {
        ExpansionLimit {
            ratio: 100,
            floor: 64 << 20,
            cap: 64 << 30,
        }
    }
}

impl ExpansionLimit {
    /// The most tar bytes a blob of `compressed` bytes may unpack to.
    pub fn max_size(&self, compressed: u64) -> u64 {
        compressed
            .saturating_mul(self.ratio)
            .max(self.floor)
            .min(self.cap)
    }
}

/// What an unpack did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackReport {
    /// SHA-256 of the whole tar stream, trailing padding included: the diff ID.
    pub diff_id: Digest,
    /// Length of the tar stream in bytes.
    pub size: u64,
    /// Entries written.
    pub entries: u64,
    /// Entries not written because they need root (devices) or are of a
    /// kind a layer cannot hold (sockets, volume labels...).
    pub skipped: u64,
    /// Extended attributes that could not be set.
    pub xattrs_failed: u64,
}

/// Unpacks the uncompressed tar `reader` into the existing, empty directory
/// `dest`, and reads the stream to its end to compute its diff ID. Past
/// every 32 MiB written, a background syncfs of `dest`'s filesystem starts
/// the disk writing early (see `writeback.rs`); making the result durable
/// is still the caller's job.
pub fn unpack<R: Read>(reader: R, dest: &Path, options: &UnpackOptions) -> Result<UnpackReport> {
    let exceeded = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hashing = HashingReader {
        inner: reader,
        digester: Digester::sha256(),
        limit: options.max_size.map(|max| (max, exceeded.clone())),
    };
    let too_large = |err: Error| match options.max_size {
        Some(limit) if exceeded.load(std::sync::atomic::Ordering::SeqCst) => {
            Error::LayerTooLarge { limit }
        }
        _ => err,
    };
    unpack_hashed(hashing, dest, options).map_err(too_large)
}

fn unpack_hashed<R: Read>(
    hashing: HashingReader<R>,
    dest: &Path,
    options: &UnpackOptions,
) -> Result<UnpackReport> {
    let mut archive = tar::Archive::new(BufReader::with_capacity(COPY_BUFFER, hashing));
    let mut unpacker = Unpacker {
        dest,
        options,
        verified: HashSet::new(),
        dirs: HashMap::new(),
        buffer: vec![0; COPY_BUFFER],
        entries: 0,
        skipped: 0,
        xattrs_failed: 0,
        create: CreateRules::for_dest(dest),
        writeback: EarlyWriteback::new(dest),
    };
    for entry in archive.entries().map_err(tar_error)? {
        let mut entry = entry.map_err(tar_error)?;
        unpacker.entry(&mut entry)?;
    }
    unpacker.finish_dirs()?;
    // The diff ID covers the whole stream, including what follows the
    // end-of-archive blocks.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(tar_error)?;
    let hashing = rest.into_inner();
    let size = hashing.digester.bytes();
    Ok(UnpackReport {
        diff_id: hashing.digester.finish(),
        size,
        entries: unpacker.entries,
        skipped: unpacker.skipped,
        xattrs_failed: unpacker.xattrs_failed,
    })
}

fn tar_error(source: io::Error) -> Error {
    Error::Tar { source }
}

/// Hashes what passes; with a limit, fails (raising the flag) once more
/// than that many bytes came.
struct HashingReader<R> {
    inner: R,
    digester: Digester,
    limit: Option<(u64, std::sync::Arc<std::sync::atomic::AtomicBool>)>,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.digester.update(&buf[..n]);
        if let Some((max, exceeded)) = &self.limit {
            if self.digester.bytes() > *max {
                exceeded.store(true, std::sync::atomic::Ordering::SeqCst);
                return Err(io::Error::other("layer expands past its size limit"));
            }
        }
        Ok(n)
    }
}

/// Splits a tar path into safe relative components: empty and `.`
/// components dropped (so a leading `/` is dropped), `..` refused. `None`
/// for the root itself.
pub(crate) fn clean_path(raw: &[u8]) -> std::result::Result<Option<PathBuf>, &'static str> {
    if raw.contains(&0) {
        return Err("contains a NUL byte");
    }
    let mut out = PathBuf::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("escapes the layer directory"),
            name => out.push(OsStr::from_bytes(name)),
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Whether a file name is a whiteout or opaque marker.
pub(crate) fn is_whiteout_name(name: &OsStr) -> bool {
    name.as_bytes().starts_with(WHITEOUT_PREFIX.as_bytes())
}

/// The ownership, mode, times and xattrs an entry asks for.
#[derive(Debug, Clone)]
struct Meta {
    mode: u32,
    uid: u64,
    gid: u64,
    /// Modification time since the epoch (sub-second from a PAX record).
    mtime: Duration,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

struct Unpacker<'a> {
    dest: &'a Path,
    options: &'a UnpackOptions,
    /// Relative directories known to be real directories (not symlinks).
    verified: HashSet<PathBuf>,
    /// Directory metadata to apply at the end, by relative path.
    dirs: HashMap<PathBuf, (String, Meta)>,
    buffer: Vec<u8>,
    entries: u64,
    skipped: u64,
    xattrs_failed: u64,
    /// What a file created here gets (see [`CreateRules::for_dest`]).
    create: CreateRules,
    /// Starts the disk writing of what is unpacked as it goes.
    writeback: EarlyWriteback<'a>,
}

/// What a file created in the destination gets without further calls,
/// so that the usual file needs no fchmod and, as root, no fchown.
#[derive(Debug, Clone, Copy)]
struct CreateRules {
    /// The process's umask, when the mode passed to open(2) is exactly
    /// the mode minus it (no default ACL in the destination).
    umask: Option<u32>,
    /// The owner a new file gets (the effective uid and gid, when the
    /// destination is not setgid).
    owner: Option<(u32, u32)>,
}

impl CreateRules {
    fn for_dest(dest: &Path) -> CreateRules {
        let none = CreateRules {
            umask: None,
            owner: None,
        };
        let Ok(meta) = fs::metadata(dest) else {
            return none;
        };
        if meta.permissions().mode() & 0o2000 != 0 {
            return none;
        }
        let default_acl = rustix::fs::getxattr(dest, "system.posix_acl_default", &mut [0u8; 0][..]);
        let umask = match default_acl {
            Ok(n) if n > 0 => None,
            _ => process_umask(),
        };
        CreateRules {
            umask,
            owner: Some((
                rustix::process::geteuid().as_raw(),
                rustix::process::getegid().as_raw(),
            )),
        }
    }

    /// The mode a file created with `mode` has, when known.
    fn created_mode(&self, mode: u32) -> Option<u32> {
        self.umask.map(|umask| mode & !umask)
    }
}

/// The process's umask, read from `/proc/self/status` (reading it with
/// umask(2) would change it for every thread for a moment).
fn process_umask() -> Option<u32> {
    static UMASK: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        let status = fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
        u32::from_str_radix(line.trim(), 8).ok()
    })
}

enum Kind {
    File,
    Marker,
    Dir,
    Symlink(PathBuf),
    Hardlink(Vec<u8>),
    Device(FileType),
    Fifo,
}

impl Unpacker<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let unsafe_entry = |reason: String| Error::UnsafeEntry {
            entry: shown.clone(),
            reason,
        };
        let header = entry.header();
        let entry_type = header.entry_type();
        let kind = match entry_type {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                Kind::File
            }
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| unsafe_entry("is a symlink without a target".into()))?;
                Kind::Symlink(PathBuf::from(OsStr::from_bytes(&target)))
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| unsafe_entry("is a hard link without a target".into()))?;
                Kind::Hardlink(target.into_owned())
            }
            tar::EntryType::Char => Kind::Device(FileType::CharacterDevice),
            tar::EntryType::Block => Kind::Device(FileType::BlockDevice),
            tar::EntryType::Fifo => Kind::Fifo,
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => return Ok(()),
            _ => {
                self.skipped += 1;
                return Ok(());
            }
        };
        let rel = match clean_path(&raw) {
            Ok(Some(rel)) => rel,
            Ok(None) => return Ok(()),
            Err(reason) => return Err(unsafe_entry(reason.into())),
        };
        let is_marker = rel.file_name().is_some_and(is_whiteout_name);
        let kind = if is_marker { Kind::Marker } else { kind };
        let pax_mtime = pax_mtime(entry)?;
        let header = entry.header();
        let meta = Meta {
            mode: header.mode().map_err(tar_error)? & 0o7777,
            // Blank numeric fields (some tools write them) mean 0, as in Go's
            // archive/tar; the header checksum already vouches for the rest.
            uid: header.uid().unwrap_or(0),
            gid: header.gid().unwrap_or(0),
            mtime: pax_mtime.unwrap_or(Duration::from_secs(header.mtime().unwrap_or(0))),
            xattrs: if self.options.xattrs {
                xattrs_of(entry)?
            } else {
                Vec::new()
            },
        };
        if let Kind::Device(_) = kind {
            if !self.options.as_root {
                self.skipped += 1;
                return Ok(());
            }
        }
        let io_err = |source: io::Error| Error::Entry {
            entry: shown.clone(),
            source,
        };

        self.prepare_parent(&rel, &shown)?;
        let full = self.dest.join(&rel);
        match kind {
            Kind::Dir => {
                let mkdir = || fs::DirBuilder::new().mode(0o700).create(&full);
                // Created first, looked at only when something is there
                // (one syscall for the usual new path instead of two).
                match mkdir() {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        if !self.clear_target(&full, true).map_err(io_err)? {
                            mkdir().map_err(io_err)?;
                        }
                    }
                    Err(e) => return Err(io_err(e)),
                }
                self.verified.insert(rel.clone());
                self.dirs.insert(rel, (shown, meta));
            }
            Kind::File | Kind::Marker => {
                // Created with its final permission bits (the special
                // ones come with the fchmod after an fchown). O_EXCL
                // fails on anything already there (a symlink included),
                // which is then removed first.
                let mode = meta.mode & 0o777;
                let mut file = match create_file_with_mode(&full, mode) {
                    Ok(file) => file,
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        self.clear_target(&full, false).map_err(io_err)?;
                        create_file_with_mode(&full, mode).map_err(io_err)?
                    }
                    Err(e) => return Err(io_err(e)),
                };
                if let Kind::File = kind {
                    copy_content(entry, &mut file, &mut self.buffer).map_err(io_err)?;
                    self.writeback.wrote(entry.size());
                }
                let created = self.create.created_mode(mode);
                self.apply_to_file(&file, &meta, created).map_err(io_err)?;
            }
            Kind::Symlink(target) => {
                match std::os::unix::fs::symlink(&target, &full) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        self.clear_target(&full, false).map_err(io_err)?;
                        std::os::unix::fs::symlink(&target, &full).map_err(io_err)?;
                    }
                    Err(e) => return Err(io_err(e)),
                }
                self.apply_by_path(&full, &meta, true).map_err(io_err)?;
            }
            Kind::Hardlink(target_raw) => {
                let target = self.check_link_target(&target_raw, &shown)?;
                if target != rel {
                    self.clear_target(&full, false).map_err(io_err)?;
                    fs::hard_link(self.dest.join(&target), &full).map_err(io_err)?;
                }
            }
            Kind::Device(file_type) => {
                self.clear_target(&full, false).map_err(io_err)?;
                let header = entry.header();
                let major = header.device_major().map_err(tar_error)?.unwrap_or(0);
                let minor = header.device_minor().map_err(tar_error)?.unwrap_or(0);
                match rustix::fs::mknodat(
                    CWD,
                    &full,
                    file_type,
                    Mode::from_raw_mode(0o600),
                    rustix::fs::makedev(major, minor),
                ) {
                    Ok(()) => {}
                    // Root without CAP_MKNOD (a user namespace): skip too.
                    Err(rustix::io::Errno::PERM) | Err(rustix::io::Errno::ACCESS) => {
                        self.skipped += 1;
                        return Ok(());
                    }
                    Err(e) => return Err(io_err(e.into())),
                }
                self.apply_by_path(&full, &meta, false).map_err(io_err)?;
            }
            Kind::Fifo => {
                self.clear_target(&full, false).map_err(io_err)?;
                rustix::fs::mknodat(CWD, &full, FileType::Fifo, Mode::from_raw_mode(0o600), 0)
                    .map_err(|e| io_err(e.into()))?;
                self.apply_by_path(&full, &meta, false).map_err(io_err)?;
            }
        }
        self.entries += 1;
        Ok(())
    }

    /// Makes sure every parent of `rel` is a real directory inside `dest`,
    /// creating missing ones; refuses symlinks and non-directories.
    fn prepare_parent(&mut self, rel: &Path, shown: &str) -> Result<()> {
        let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) else {
            return Ok(());
        };
        if self.verified.contains(parent) {
            return Ok(());
        }
        let mut current = PathBuf::new();
        for component in parent.components() {
            current.push(component);
            if self.verified.contains(&current) {
                continue;
            }
            let full = self.dest.join(&current);
            match fs::symlink_metadata(&full) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(Error::UnsafeEntry {
                        entry: shown.to_owned(),
                        reason: format!(
                            "goes through the symlink {:?} planted by an earlier entry",
                            current.display().to_string()
                        ),
                    })
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(Error::UnsafeEntry {
                        entry: shown.to_owned(),
                        reason: format!(
                            "has {:?} as a parent, which is not a directory",
                            current.display().to_string()
                        ),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&full)
                        .map_err(|source| Error::Entry {
                            entry: shown.to_owned(),
                            source,
                        })?;
                }
                Err(source) => {
                    return Err(Error::Entry {
                        entry: shown.to_owned(),
                        source,
                    })
                }
            }
            self.verified.insert(current.clone());
        }
        Ok(())
    }

    /// Removes whatever is at `full` unless both it and the new entry are
    /// directories; returns whether an existing directory was kept.
    fn clear_target(&mut self, full: &Path, new_is_dir: bool) -> io::Result<bool> {
        match fs::symlink_metadata(full) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
            Ok(m) if m.is_dir() && new_is_dir => Ok(true),
            Ok(m) if m.is_dir() => {
                crate::fsutil::remove_tree(full).map_err(|e| match e {
                    Error::Io { source, .. } => source,
                    other => io::Error::other(other.to_string()),
                })?;
                // Cached directories below it are gone; start afresh.
                self.verified.clear();
                Ok(false)
            }
            Ok(_) => fs::remove_file(full).map(|()| false),
        }
    }

    /// Resolves a hard link's target inside the layer, refusing escapes,
    /// symlinked parents, missing targets and directories.
    fn check_link_target(&self, raw: &[u8], shown: &str) -> Result<PathBuf> {
        let target_shown = String::from_utf8_lossy(raw).into_owned();
        let refuse = |why: &str| Error::UnsafeEntry {
            entry: shown.to_owned(),
            reason: format!("is a hard link to {target_shown:?}, which {why}"),
        };
        let target = match clean_path(raw) {
            Ok(Some(t)) => t,
            Ok(None) => return Err(refuse("is the layer directory itself")),
            Err(_) => return Err(refuse("escapes the layer directory")),
        };
        let mut current = PathBuf::new();
        let count = target.components().count();
        for (i, component) in target.components().enumerate() {
            current.push(component);
            match fs::symlink_metadata(self.dest.join(&current)) {
                Ok(m) if i + 1 < count && m.file_type().is_symlink() => {
                    return Err(refuse("goes through a symlink"))
                }
                Ok(m) if i + 1 < count && !m.is_dir() => {
                    return Err(refuse("is not in this layer"))
                }
                Ok(m) if i + 1 == count && m.is_dir() => return Err(refuse("is a directory")),
                Ok(_) => {}
                Err(_) => return Err(refuse("is not in this layer")),
            }
        }
        Ok(target)
    }

    /// Owner, xattrs, mode and times of a freshly written file, through its
    /// open descriptor. `created`: the mode it was created with, when
    /// known; the mode is then set only when it differs. The owner is set
    /// only when it is not the one a new file gets anyway (which also
    /// keeps setuid bits and capabilities, which chown would clear).
    fn apply_to_file(&mut self, file: &File, meta: &Meta, created: Option<u32>) -> io::Result<()> {
        let owner = (meta.uid as u32, meta.gid as u32);
        if self.options.as_root && self.create.owner != Some(owner) {
            std::os::unix::fs::fchown(file, Some(owner.0), Some(owner.1))?;
        }
        for (name, value) in &meta.xattrs {
            if rustix::fs::fsetxattr(file, name.as_os_str(), value, XattrFlags::empty()).is_err() {
                self.xattrs_failed += 1;
            }
        }
        if created != Some(meta.mode) {
            file.set_permissions(fs::Permissions::from_mode(meta.mode))?;
        }
        let time = UNIX_EPOCH + meta.mtime;
        file.set_times(fs::FileTimes::new().set_accessed(time).set_modified(time))
    }

    /// Owner, xattrs, mode and times by path, never following a symlink
    /// (`symlink`: the entry is one, so no mode is set).
    fn apply_by_path(&mut self, full: &Path, meta: &Meta, symlink: bool) -> io::Result<()> {
        let owner = (meta.uid as u32, meta.gid as u32);
        if self.options.as_root && self.create.owner != Some(owner) {
            std::os::unix::fs::lchown(full, Some(owner.0), Some(owner.1))?;
        }
        for (name, value) in &meta.xattrs {
            if rustix::fs::lsetxattr(full, name.as_os_str(), value, XattrFlags::empty()).is_err() {
                self.xattrs_failed += 1;
            }
        }
        if !symlink {
            fs::set_permissions(full, fs::Permissions::from_mode(meta.mode))?;
        }
        set_times_nofollow(full, meta.mtime)
    }

    /// Applies directories' metadata, deepest first, re-checking that each
    /// path is still a real directory reached through real directories.
    fn finish_dirs(&mut self) -> Result<()> {
        let mut dirs: Vec<(PathBuf, (String, Meta))> = self.dirs.drain().collect();
        dirs.sort_by(|a, b| {
            b.0.components()
                .count()
                .cmp(&a.0.components().count())
                .then_with(|| a.0.cmp(&b.0))
        });
        for (rel, (shown, meta)) in dirs {
            if !is_real_dir_chain(self.dest, &rel) {
                continue; // replaced by a later entry
            }
            let full = self.dest.join(&rel);
            let io_err = |source: io::Error| Error::Entry {
                entry: shown.clone(),
                source,
            };
            let dir = open_dir_nofollow(&full).map_err(io_err)?;
            self.apply_to_file(&dir, &meta, None).map_err(io_err)?;
        }
        Ok(())
    }
}

/// Whether every component of `rel` under `root` is a directory (not a
/// symlink), checked with `lstat`.
pub(crate) fn is_real_dir_chain(root: &Path, rel: &Path) -> bool {
    let mut current = root.to_path_buf();
    for component in rel.components() {
        if !matches!(component, Component::Normal(_)) {
            return false;
        }
        current.push(component);
        match fs::symlink_metadata(&current) {
            Ok(m) if m.is_dir() => {}
            _ => return false,
        }
    }
    true
}

/// Opens a directory for metadata changes without following a symlink.
pub(crate) fn open_dir_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags((OFlags::DIRECTORY | OFlags::NOFOLLOW).bits() as i32)
        .open(path)
}

/// Creates a new file, never following or reusing what is there.
pub(crate) fn create_file(path: &Path) -> io::Result<File> {
    create_file_with_mode(path, 0o600)
}

/// [`create_file`] with `mode` (before the umask) instead of `0600`.
fn create_file_with_mode(path: &Path, mode: u32) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

/// Sets atime and mtime of `path` (a symlink itself, not its target).
pub(crate) fn set_times_nofollow(path: &Path, mtime: Duration) -> io::Result<()> {
    let ts = Timespec {
        tv_sec: mtime.as_secs() as i64,
        tv_nsec: mtime.subsec_nanos().into(),
    };
    let times = Timestamps {
        last_access: ts,
        last_modification: ts,
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW).map_err(io::Error::from)
}

fn copy_content<R: Read>(from: &mut R, to: &mut File, buffer: &mut [u8]) -> io::Result<()> {
    loop {
        let n = match from.read(buffer) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buffer[..n])?;
    }
}

/// The PAX `mtime` record (`SECONDS[.FRACTION]`), which keeps what the
/// ustar field cannot: sub-second precision and large values.
fn pax_mtime<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Option<Duration>> {
    let Some(extensions) = entry.pax_extensions().map_err(tar_error)? else {
        return Ok(None);
    };
    for extension in extensions {
        let extension = extension.map_err(tar_error)?;
        if extension.key_bytes() == b"mtime" {
            let text = String::from_utf8_lossy(extension.value_bytes());
            let (seconds, fraction) = text.split_once('.').unwrap_or((&text, ""));
            let Ok(seconds) = seconds.parse::<u64>() else {
                return Ok(None); // negative or garbled: keep the ustar field
            };
            let digits: String = fraction.chars().take(9).collect();
            let nanos = if digits.is_empty() {
                0
            } else {
                digits.parse::<u32>().unwrap_or(0) * 10u32.pow(9 - digits.len() as u32)
            };
            return Ok(Some(Duration::new(seconds, nanos)));
        }
    }
    Ok(None)
}

fn xattrs_of<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Vec<(OsString, Vec<u8>)>> {
    let mut out = Vec::new();
    if let Some(extensions) = entry.pax_extensions().map_err(tar_error)? {
        for extension in extensions {
            let extension = extension.map_err(tar_error)?;
            if let Some(name) = extension.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                out.push((
                    OsStr::from_bytes(name).to_os_string(),
                    extension.value_bytes().to_vec(),
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_path_drops_leading_slash_and_dots_and_refuses_dotdot() {
        assert_eq!(
            clean_path(b"/etc/passwd"),
            Ok(Some(PathBuf::from("etc/passwd")))
        );
        assert_eq!(clean_path(b"./a//b/./c/"), Ok(Some(PathBuf::from("a/b/c"))));
        assert_eq!(clean_path(b"./"), Ok(None));
        assert_eq!(clean_path(b"/"), Ok(None));
        assert!(clean_path(b"../x").is_err());
        assert!(clean_path(b"a/../../x").is_err());
        assert!(clean_path(b"a/../b").is_err());
        assert_eq!(clean_path(b"a/..b"), Ok(Some(PathBuf::from("a/..b"))));
    }

    #[test]
    fn whiteout_names() {
        assert!(is_whiteout_name(OsStr::new(".wh.foo")));
        assert!(is_whiteout_name(OsStr::new(OPAQUE_MARKER)));
        assert!(!is_whiteout_name(OsStr::new("wh.foo")));
    }
}
