//! A small tar writer for archives we produce: ustar headers (long paths
//! split into name and prefix, sizes over 8 GiB in base-256), owner 0,
//! mtime 0, and streaming of members whose size is known only once they
//! are written (the header is patched afterwards, so nothing is buffered).

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{Error, IoContext, Result, COPY_BUFFER};

const BLOCK: u64 = 512;

pub(crate) struct TarWriter {
    out: BufWriter<File>,
    path: PathBuf,
    position: u64,
    buffer: Vec<u8>,
}

/// The header of an entry; a name too long for ustar's name and prefix
/// fields (a `sha512` blob) gets a PAX `path` record first, returned as
/// the leading bytes.
fn header(
    name: &str,
    kind: tar::EntryType,
    size: u64,
    mode: u32,
) -> io::Result<(Vec<u8>, tar::Header)> {
    let mut header = tar::Header::new_ustar();
    let mut pax = Vec::new();
    if header.set_path(name).is_err() {
        let short: String = name
            .chars()
            .rev()
            .take(99)
            .collect::<String>()
            .chars()
            .rev()
            .collect();
        header.set_path(short.trim_start_matches('/'))?;
        let record = pax_record("path", name);
        let mut pax_header = tar::Header::new_ustar();
        pax_header.set_path("PaxHeader")?;
        pax_header.set_entry_type(tar::EntryType::XHeader);
        pax_header.set_size(record.len() as u64);
        pax_header.set_mode(0o644);
        pax_header.set_mtime(0);
        pax_header.set_cksum();
        pax.extend_from_slice(pax_header.as_bytes());
        pax.extend_from_slice(&record);
        pax.resize(pax.len().div_ceil(BLOCK as usize) * BLOCK as usize, 0);
    }
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    Ok((pax, header))
}

/// One PAX record: `LEN KEY=VALUE\n`, LEN counting the whole record.
fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while format!("{len}{body}").len() != len {
        len += 1;
    }
    format!("{len}{body}").into_bytes()
}

impl TarWriter {
    /// Writes a tar into `file` (at `path`, for messages), from its start.
    pub(crate) fn new(file: File, path: &Path) -> Self {
        TarWriter {
            out: BufWriter::with_capacity(COPY_BUFFER, file),
            path: path.to_path_buf(),
            position: 0,
            buffer: vec![0; COPY_BUFFER],
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).at(&self.path)?;
        self.position += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self, size: u64) -> Result<()> {
        let rest = (BLOCK - size % BLOCK) % BLOCK;
        self.write(&[0u8; BLOCK as usize][..rest as usize])
    }

    fn header_for(
        &self,
        name: &str,
        kind: tar::EntryType,
        size: u64,
        mode: u32,
    ) -> Result<(Vec<u8>, tar::Header)> {
        header(name, kind, size, mode).map_err(|e| Error::Io {
            path: self.path.join(name),
            source: e,
        })
    }

    /// A directory entry (`name` without trailing slash).
    pub(crate) fn directory(&mut self, name: &str) -> Result<()> {
        let (pax, h) = self.header_for(name, tar::EntryType::Directory, 0, 0o755)?;
        self.write(&pax)?;
        self.write(h.as_bytes())
    }

    /// A file with the given content.
    pub(crate) fn bytes(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let (pax, h) = self.header_for(name, tar::EntryType::Regular, data.len() as u64, 0o644)?;
        self.write(&pax)?;
        self.write(h.as_bytes())?;
        self.write(data)?;
        self.pad(data.len() as u64)
    }

    /// A file streamed from `reader`; with `expected` the size must be
    /// exactly that. Returns the size. Read failures are turned into errors
    /// by `read_error`.
    pub(crate) fn stream(
        &mut self,
        name: &str,
        reader: &mut dyn Read,
        expected: Option<u64>,
        read_error: &dyn Fn(io::Error) -> Error,
    ) -> Result<u64> {
        let (pax, placeholder) =
            self.header_for(name, tar::EntryType::Regular, expected.unwrap_or(0), 0o644)?;
        self.write(&pax)?;
        let start = self.position;
        self.write(placeholder.as_bytes())?;
        let mut size = 0u64;
        let mut buffer = std::mem::take(&mut self.buffer);
        let copied = loop {
            let n = match reader.read(&mut buffer) {
                Ok(0) => break Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(read_error(e)),
            };
            if let Err(e) = self.write(&buffer[..n]) {
                break Err(e);
            }
            size += n as u64;
        };
        self.buffer = buffer;
        copied?;
        if let Some(expected) = expected {
            if size != expected {
                return Err(Error::SizeMismatch {
                    member: name.to_owned(),
                    expected,
                    actual: size,
                });
            }
        } else {
            let (_, real) = self.header_for(name, tar::EntryType::Regular, size, 0o644)?;
            let end = self.position;
            self.out.seek(SeekFrom::Start(start)).at(&self.path)?;
            self.out.write_all(real.as_bytes()).at(&self.path)?;
            self.out.seek(SeekFrom::Start(end)).at(&self.path)?;
        }
        self.pad(size)?;
        Ok(size)
    }

    /// Writes the end-of-archive blocks and returns the flushed file.
    pub(crate) fn finish(mut self) -> Result<File> {
        self.write(&[0u8; 2 * BLOCK as usize])?;
        self.out
            .into_inner()
            .map_err(|e| e.into_error())
            .at(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_members_get_their_size_patched_in() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.tar");
        let mut w = TarWriter::new(File::create(&path).unwrap(), &path);
        w.directory("d").unwrap();
        w.bytes("d/small", b"abc").unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let no_error = |e: io::Error| Error::Io {
            path: PathBuf::new(),
            source: e,
        };
        let n = w.stream("d/big", &mut &data[..], None, &no_error).unwrap();
        assert_eq!(n, data.len() as u64);
        let long = format!("blobs/sha512/{}", "a".repeat(128));
        w.stream(&long, &mut &b"xy"[..], Some(2), &no_error)
            .unwrap();
        w.finish().unwrap();

        let mut archive = tar::Archive::new(File::open(&path).unwrap());
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut content = Vec::new();
            entry.read_to_end(&mut content).unwrap();
            seen.push((entry.path().unwrap().display().to_string(), content));
        }
        assert_eq!(seen.len(), 4);
        assert_eq!(seen[1], ("d/small".to_string(), b"abc".to_vec()));
        assert_eq!(seen[2], ("d/big".to_string(), data));
        assert_eq!(seen[3], (long, b"xy".to_vec()));
    }

    #[test]
    fn a_member_of_the_wrong_size_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.tar");
        let mut w = TarWriter::new(File::create(&path).unwrap(), &path);
        let no_error = |e: io::Error| Error::Io {
            path: PathBuf::new(),
            source: e,
        };
        let err = w
            .stream("x", &mut &b"abc"[..], Some(4), &no_error)
            .unwrap_err();
        assert!(matches!(err, Error::SizeMismatch { .. }), "{err}");
    }
}
