//! Reading an archive's members: a tar indexed in one pass over its headers
//! and then read with seeks, or an OCI layout directory. Paths named by the
//! archive's metadata never leave the archive.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use haul_oci::Compression;

use super::{Error, IoContext, Result, COPY_BUFFER};

/// Links followed to reach one member, at most.
const MAX_LINKS: usize = 32;

/// One member opened for reading.
pub(crate) struct Member {
    /// Its bytes, streamed.
    pub reader: Box<dyn Read + Send>,
    /// Its size.
    pub size: u64,
}

/// The members of an archive, by their path inside it.
pub(crate) trait Source: Send + Sync {
    /// Opens the member at `member` (a path as [`clean_member_path`] gives
    /// it), following links inside the archive.
    fn open(&self, member: &str) -> Result<Member>;

    /// Whether `member` exists (as a file or a link).
    fn contains(&self, member: &str) -> bool;
}

/// A path the archive's metadata names, made relative and clean: `./a//b`
/// is `a/b`, `a/../b` is `b`. An absolute path, one escaping the archive
/// (`../x`) or one naming nothing is refused.
pub(crate) fn clean_member_path(path: &str) -> Result<String> {
    let unsafe_path = |reason: &str| Error::UnsafePath {
        member: path.to_owned(),
        reason: reason.to_owned(),
    };
    if path.starts_with('/') {
        return Err(unsafe_path("is absolute"));
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(unsafe_path("escapes the archive"));
                }
            }
            other => parts.push(other),
        }
    }
    if parts.is_empty() {
        return Err(unsafe_path("names no file"));
    }
    Ok(parts.join("/"))
}

/// Reads a whole small member, refusing one over `limit` bytes.
pub(crate) fn read_small(source: &dyn Source, member: &str, limit: u64) -> Result<Vec<u8>> {
    let Member { reader, size } = source.open(member)?;
    if size > limit {
        return Err(Error::Invalid {
            what: member.to_owned(),
            reason: format!("it is {size} bytes, over the limit of {limit}"),
        });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    reader
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::Member {
            member: member.to_owned(),
            source: Box::new(Error::Io {
                path: PathBuf::from(member),
                source: e,
            }),
        })?;
    Ok(bytes)
}

/// Opens `input`: a directory is an OCI layout; a file is a tar, inflated
/// first into a temporary file under `spool_dir` when compressed.
pub(crate) fn open_input(input: &Path, spool_dir: &Path) -> Result<Box<dyn Source>> {
    let meta = fs::metadata(input).at(input)?;
    if meta.is_dir() {
        return Ok(Box::new(DirSource::open(input)?));
    }
    let mut file = File::open(input).at(input)?;
    let mut head = [0u8; 4];
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..]).at(input)? {
            0 => break,
            n => filled += n,
        }
    }
    let compression = haul_store::detect_compression(&head[..filled]);
    let seekable = meta.is_file();
    if compression == Some(Compression::Uncompressed) && seekable {
        file.seek(SeekFrom::Start(0)).at(input)?;
        return Ok(Box::new(TarSource::index(file, input, None)?));
    }
    if seekable {
        file.seek(SeekFrom::Start(0)).at(input)?;
        spool(Box::new(file), input, spool_dir)
    } else {
        let rest = io::Cursor::new(head).take(filled as u64).chain(file);
        spool(Box::new(rest), input, spool_dir)
    }
}

/// Inflates (if compressed) a stream into a temporary file and indexes it.
fn spool(reader: Box<dyn Read + Send>, input: &Path, spool_dir: &Path) -> Result<Box<dyn Source>> {
    let mut temp = tempfile::Builder::new()
        .prefix("load-")
        .tempfile_in(spool_dir)
        .at(spool_dir)?;
    let mut inflated = haul_store::decompressing_reader(reader, Compression::Uncompressed)
        .map_err(|e| not_an_archive(input, format!("cannot decompress it: {e}")))?;
    let mut buffer = vec![0u8; COPY_BUFFER];
    loop {
        let n = match inflated.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(not_an_archive(input, format!("cannot decompress it: {e}"))),
        };
        io::Write::write_all(temp.as_file_mut(), &buffer[..n]).at(temp.path())?;
    }
    let file = temp.reopen().at(temp.path())?;
    let path = temp.path().to_path_buf();
    Ok(Box::new(TarSource::index(file, &path, Some(temp))?))
}

fn not_an_archive(input: &Path, reason: String) -> Error {
    Error::NotAnArchive {
        path: input.to_path_buf(),
        reason,
    }
}

enum TarMember {
    File { offset: u64, size: u64 },
    Symlink(String),
    Hardlink(String),
    Other(String),
}

/// A tar file whose members were indexed by one pass over its headers.
struct TarSource {
    path: PathBuf,
    members: HashMap<String, TarMember>,
    /// The inflated copy being read, deleted on drop.
    _spool: Option<tempfile::NamedTempFile>,
}

impl TarSource {
    fn index(file: File, path: &Path, spool: Option<tempfile::NamedTempFile>) -> Result<Self> {
        let bad = |e: io::Error| not_an_archive(path, format!("not a readable tar archive: {e}"));
        let mut archive = tar::Archive::new(file);
        let mut members = HashMap::new();
        for entry in archive.entries_with_seek().map_err(bad)? {
            let entry = entry.map_err(bad)?;
            let name = match entry.path() {
                Ok(p) => p.to_string_lossy().into_owned(),
                Err(_) => continue,
            };
            // Entries are keys only: nothing is extracted by name, and one
            // whose name escapes can never be asked for.
            let Ok(key) = clean_member_path(name.trim_start_matches('/')) else {
                continue;
            };
            let link = || {
                entry
                    .link_name()
                    .ok()
                    .flatten()
                    .map(|l| l.to_string_lossy().into_owned())
                    .unwrap_or_default()
            };
            let member = match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => TarMember::File {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                },
                tar::EntryType::Symlink => TarMember::Symlink(link()),
                tar::EntryType::Link => TarMember::Hardlink(link()),
                tar::EntryType::Directory => continue,
                other => TarMember::Other(format!("{other:?}")),
            };
            members.insert(key, member);
        }
        Ok(TarSource {
            path: path.to_path_buf(),
            members,
            _spool: spool,
        })
    }
}

impl Source for TarSource {
    fn open(&self, member: &str) -> Result<Member> {
        let mut current = member.to_owned();
        for _ in 0..MAX_LINKS {
            let next = match self.members.get(&current) {
                None => {
                    return Err(Error::MissingMember {
                        member: member.to_owned(),
                    })
                }
                Some(TarMember::File { offset, size }) => {
                    let mut file = File::open(&self.path).at(&self.path)?;
                    file.seek(SeekFrom::Start(*offset)).at(&self.path)?;
                    return Ok(Member {
                        reader: Box::new(file.take(*size)),
                        size: *size,
                    });
                }
                Some(TarMember::Other(kind)) => {
                    return Err(Error::UnsupportedArchive(format!(
                        "archive member {member:?} is a {kind} entry, not a file"
                    )))
                }
                Some(TarMember::Symlink(target)) => {
                    if target.starts_with('/') {
                        return Err(Error::UnsafePath {
                            member: format!("{current} -> {target}"),
                            reason: "is an absolute link".into(),
                        });
                    }
                    let dir = current.rsplit_once('/').map_or("", |(d, _)| d);
                    clean_member_path(&format!("{dir}/{target}")).map_err(|_| {
                        Error::UnsafePath {
                            member: format!("{current} -> {target}"),
                            reason: "escapes the archive".into(),
                        }
                    })?
                }
                Some(TarMember::Hardlink(target)) => {
                    clean_member_path(target).map_err(|_| Error::UnsafePath {
                        member: format!("{current} => {target}"),
                        reason: "escapes the archive".into(),
                    })?
                }
            };
            current = next;
        }
        Err(Error::UnsafePath {
            member: member.to_owned(),
            reason: format!("goes through more than {MAX_LINKS} links"),
        })
    }

    fn contains(&self, member: &str) -> bool {
        self.members.contains_key(member)
    }
}

/// An OCI layout directory.
struct DirSource {
    root: PathBuf,
}

impl DirSource {
    fn open(root: &Path) -> Result<Self> {
        Ok(DirSource {
            root: fs::canonicalize(root).at(root)?,
        })
    }

    /// The member's real path, refused when a symlink leads it out of the
    /// layout.
    fn resolve(&self, member: &str) -> Result<PathBuf> {
        let joined = self.root.join(member);
        let real = match fs::canonicalize(&joined) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::MissingMember {
                    member: member.to_owned(),
                })
            }
            Err(e) => return Err(e).at(&joined),
        };
        if !real.starts_with(&self.root) {
            return Err(Error::UnsafePath {
                member: member.to_owned(),
                reason: format!("leads out of the layout (to {})", real.display()),
            });
        }
        Ok(real)
    }
}

impl Source for DirSource {
    fn open(&self, member: &str) -> Result<Member> {
        let path = self.resolve(member)?;
        let file = File::open(&path).at(&path)?;
        let meta = file.metadata().at(&path)?;
        if !meta.is_file() {
            return Err(Error::UnsupportedArchive(format!(
                "layout member {member:?} is not a regular file"
            )));
        }
        Ok(Member {
            reader: Box::new(file),
            size: meta.len(),
        })
    }

    fn contains(&self, member: &str) -> bool {
        self.root.join(member).exists()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_paths_are_cleaned_and_kept_inside() {
        assert_eq!(clean_member_path("./a//b/").unwrap(), "a/b");
        assert_eq!(clean_member_path("a/../b").unwrap(), "b");
        for bad in ["../x", "a/../../x", "/etc/passwd", "", ".", "a/.."] {
            let err = clean_member_path(bad).unwrap_err();
            assert!(matches!(err, Error::UnsafePath { .. }), "{bad}: {err}");
        }
        let msg = clean_member_path("../x").unwrap_err().to_string();
        assert_eq!(msg, "archive path \"../x\" escapes the archive");
    }

    fn tar_with(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, kind, data, link) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            if let Some(link) = link {
                header.set_link_name(link).unwrap();
            }
            builder.append_data(&mut header, name, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn source_of(bytes: Vec<u8>) -> (tempfile::TempDir, Box<dyn Source>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tar");
        fs::write(&path, bytes).unwrap();
        let spool = dir.path().join("spool");
        fs::create_dir(&spool).unwrap();
        let source = open_input(&path, &spool).unwrap();
        (dir, source)
    }

    fn read(source: &dyn Source, member: &str) -> Result<Vec<u8>> {
        read_small(source, member, 1 << 20)
    }

    #[test]
    fn tar_members_are_read_by_seeking_and_links_are_followed_inside() {
        let (_dir, source) = source_of(tar_with(&[
            ("./a/data", tar::EntryType::Regular, b"hello", None),
            ("b/link", tar::EntryType::Symlink, b"", Some("../a/data")),
            ("c", tar::EntryType::Link, b"", Some("a/data")),
            (
                "out",
                tar::EntryType::Symlink,
                b"",
                Some("../../etc/passwd"),
            ),
            ("abs", tar::EntryType::Symlink, b"", Some("/etc/passwd")),
            ("loop", tar::EntryType::Symlink, b"", Some("loop")),
        ]));
        assert_eq!(read(source.as_ref(), "a/data").unwrap(), b"hello");
        assert_eq!(read(source.as_ref(), "b/link").unwrap(), b"hello");
        assert_eq!(read(source.as_ref(), "c").unwrap(), b"hello");
        for bad in ["out", "abs", "loop"] {
            let err = read(source.as_ref(), bad).unwrap_err();
            assert!(matches!(err, Error::UnsafePath { .. }), "{bad}: {err}");
        }
        assert!(matches!(
            read(source.as_ref(), "nope").unwrap_err(),
            Error::MissingMember { .. }
        ));
    }

    #[test]
    fn gzip_archives_are_inflated_to_a_spool_file() {
        use std::io::Write;
        let tar = tar_with(&[("manifest.json", tar::EntryType::Regular, b"[]", None)]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let (dir, source) = source_of(gz.finish().unwrap());
        assert_eq!(read(source.as_ref(), "manifest.json").unwrap(), b"[]");
        assert_eq!(fs::read_dir(dir.path().join("spool")).unwrap().count(), 1);
        drop(source);
        assert_eq!(fs::read_dir(dir.path().join("spool")).unwrap().count(), 0);
    }

    #[test]
    fn layout_symlinks_out_of_the_directory_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
        fs::write(dir.path().join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), layout.join("blobs/sha256/aa"))
            .unwrap();
        fs::write(layout.join("index.json"), b"{}").unwrap();
        let source = open_input(&layout, dir.path()).unwrap();
        assert_eq!(read(source.as_ref(), "index.json").unwrap(), b"{}");
        let err = read(source.as_ref(), "blobs/sha256/aa").unwrap_err();
        assert!(matches!(err, Error::UnsafePath { .. }), "{err}");
    }
}
