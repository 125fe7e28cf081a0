//! Ingest, then commit: the one door through which blobs enter the store,
//! after containerd's content store.
//!
//! [`Store::ingest`] opens (or reopens) the partial file of a digest under
//! `ROOT/ingest/`, positioned at its current length, and holds that digest's
//! exclusive lock. The caller streams bytes with [`Ingest::write_all`]; they
//! are hashed as they are written. [`Ingest::commit`] checks the size and
//! the digest, fsyncs, and renames the file into `content/blobs/`, or fails
//! and leaves nothing there.
//!
//! # Resuming
//!
//! Dropping an [`Ingest`] without committing (or the process dying) keeps
//! the partial file. The next [`Store::ingest`] of that digest, in this
//! process or another, returns a writer whose [`Ingest::offset`] is the
//! number of bytes already on disk: ask the server for the rest with
//! `Range: bytes=OFFSET-` and keep writing. The hash state is rebuilt by
//! reading the existing prefix once (lazily, on the first write, commit or
//! [`Ingest::digest_state`]), so the commit still verifies the whole blob.
//! If the server ignores the range, call [`Ingest::reset`] and start over.
//!
//! # Waiting for another writer
//!
//! While one writer holds a digest, another [`Store::ingest`] of the same
//! digest blocks (or times out, with [`Store::ingest_with_timeout`]). When
//! the first commits, the waiter gets [`IngestOutcome::Present`]; when the
//! first gives up, the waiter gets the writer and resumes the partial.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::Duration;

use haul_oci::{Digest, Digester};

use crate::error::{Error, IoContext, Result};
use crate::fsutil::{fsync_dir, remove_file_if_exists};
use crate::lock::{FileLock, Lease};
use crate::Store;

/// Write buffer of an ingest: big enough to turn network-sized chunks into
/// few system calls.
const WRITE_BUFFER: usize = 256 * 1024;

/// What [`Store::ingest`] found.
// Returned once per blob and matched at once: boxing the writer would only
// cost callers a deref.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum IngestOutcome {
    /// The blob is already in the store (perhaps committed by the writer
    /// this call waited for); nothing to download.
    Present {
        /// Its size in bytes.
        size: u64,
    },
    /// The blob is missing: write it with this (maybe resumed) ingest.
    Writer(Ingest),
}

/// A blob being written: holds the digest's exclusive lock and a [`Lease`]
/// until committed, aborted or dropped. Dropping it keeps the partial file
/// for a later resume. `Send`: it may move to another thread.
pub struct Ingest {
    digest: Digest,
    data_path: PathBuf,
    blob_path: PathBuf,
    /// `ROOT/tmp`, where [`Ingest::park`] sets blobs aside.
    tmp_dir: PathBuf,
    writer: BufWriter<File>,
    offset: u64,
    /// `None` until the resumed prefix has been hashed.
    digester: Option<Digester>,
    broken: bool,
    lock: FileLock,
    _lease: Lease,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest")
            .field("digest", &self.digest)
            .field("offset", &self.offset)
            .field("path", &self.data_path)
            .finish()
    }
}

impl Store {
    /// Opens the ingest of `digest`, waiting while another writer holds it
    /// (at most the store's lock timeout). See the
    /// [module docs](crate::Ingest) for the protocol.
    pub fn ingest(&self, digest: &Digest) -> Result<IngestOutcome> {
        self.ingest_with_timeout(digest, self.lock_timeout)
    }

    /// Like [`Store::ingest`], but waits at most `timeout` for another
    /// writer of the same digest (and for a running gc), failing with
    /// [`Error::LockTimeout`].
    pub fn ingest_with_timeout(
        &self,
        digest: &Digest,
        timeout: Option<Duration>,
    ) -> Result<IngestOutcome> {
        if let Some(size) = self.present_size(digest)? {
            return Ok(IngestOutcome::Present { size });
        }
        let lease = self.lease_with_timeout(timeout)?;
        let name = format!("{}-{}", digest.algorithm(), digest.hex());
        let lock_path = self.ingest_dir().join(format!("{name}.lock"));
        let lock = FileLock::acquire_deletable(&lock_path, timeout)?;
        if let Some(size) = self.present_size(digest)? {
            lock.remove_file()?;
            return Ok(IngestOutcome::Present { size });
        }
        let data_path = self.ingest_dir().join(format!("{name}.partial"));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&data_path)
            .at(&data_path)?;
        let offset = file.seek(SeekFrom::End(0)).at(&data_path)?;
        let digester = (offset == 0).then(|| Digester::new(digest.algorithm()));
        Ok(IngestOutcome::Writer(Ingest {
            digest: digest.clone(),
            data_path,
            blob_path: self.blob_path(digest),
            tmp_dir: self.tmp_dir(),
            writer: BufWriter::with_capacity(WRITE_BUFFER, file),
            offset,
            digester,
            broken: false,
            lock,
            _lease: lease,
        }))
    }

    fn present_size(&self, digest: &Digest) -> Result<Option<u64>> {
        let path = self.blob_path(digest);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).at(&path),
        }
    }
}

impl Ingest {
    /// The digest this ingest was opened for.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// How many bytes the partial holds: where the download continues.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// A digester fed with every byte of the partial so far (re-reading the
    /// resumed prefix once if needed). Lets a caller that verifies on its
    /// own continue a resumed download and still check the whole blob.
    pub fn digest_state(&mut self) -> Result<Digester> {
        self.ensure_digester()?;
        Ok(self.digester.clone().expect("ensured above"))
    }

    /// A reader of the bytes already in the partial (`offset()` of them),
    /// for a caller that must stream the whole blob onward (say, into a
    /// decompressor and [`Store::register_layer`]) when resuming.
    pub fn prefix_reader(&mut self) -> Result<io::Take<File>> {
        self.writer.flush().at(&self.data_path)?;
        let file = File::open(&self.data_path).at(&self.data_path)?;
        Ok(file.take(self.offset))
    }

    /// Pushes buffered bytes to the partial file, so that a reader of the
    /// file (a layer unpacked while it downloads) sees every byte written.
    pub fn flush(&mut self) -> Result<()> {
        self.check_usable()?;
        if let Err(e) = self.writer.flush() {
            self.broken = true;
            return Err(e).at(&self.data_path);
        }
        Ok(())
    }

    /// Appends bytes, hashing them on the way. After an error the ingest is
    /// unusable ([`Error::IngestBroken`]): drop it and call
    /// [`Store::ingest`] again to resume from what reached the disk.
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        self.check_usable()?;
        self.ensure_digester()?;
        if let Err(e) = self.writer.write_all(bytes) {
            self.broken = true;
            return Err(e).at(&self.data_path);
        }
        if let Some(d) = &mut self.digester {
            d.update(bytes);
        }
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Discards the partial content and starts from byte 0 (when the server
    /// did not honour a range request).
    pub fn reset(&mut self) -> Result<()> {
        self.writer.flush().at(&self.data_path)?;
        let file = self.writer.get_mut();
        file.set_len(0).at(&self.data_path)?;
        file.seek(SeekFrom::Start(0)).at(&self.data_path)?;
        self.offset = 0;
        self.digester = Some(Digester::new(self.digest.algorithm()));
        self.broken = false;
        Ok(())
    }

    /// Verifies that exactly `expected_size` bytes hashing to
    /// `expected_digest` were written, fsyncs them and moves them into
    /// `content/blobs/` with an atomic rename. Nothing is added on failure:
    /// a partial shorter than `expected_size` is kept (it may be a good
    /// prefix, to resume later); a longer one, or one with the wrong digest,
    /// is deleted.
    pub fn commit(mut self, expected_size: u64, expected_digest: &Digest) -> Result<()> {
        self.verify_and_sync(expected_size, expected_digest)?;
        std::fs::rename(&self.data_path, &self.blob_path).at(&self.blob_path)?;
        if let Some(dir) = self.blob_path.parent() {
            fsync_dir(dir)?;
        }
        self.lock.remove_file()
    }

    /// Verifies like [`Ingest::commit`], then sets the blob aside in a file
    /// of its own under `ROOT/tmp/` and releases the digest's lock: for an
    /// import that commits only once a whole archive checked out, without
    /// holding any lock across the archive (two imports sharing blobs in
    /// opposite order would wait for each other forever). Dropping the
    /// [`ParkedBlob`] deletes it; a killed process leaves it to the next
    /// command's cleanup of `tmp/`.
    pub fn park(mut self, expected_size: u64, expected_digest: &Digest) -> Result<ParkedBlob> {
        self.verify_and_sync(expected_size, expected_digest)?;
        let tmp = &self.tmp_dir;
        let parked = tempfile::Builder::new()
            .prefix(&format!("parked-{}-", self.digest.hex()))
            .tempfile_in(tmp)
            .at(tmp)?
            .into_temp_path();
        std::fs::rename(&self.data_path, &parked).at(&parked)?;
        self.lock.remove_file()?;
        Ok(ParkedBlob {
            path: Some(parked),
            blob_path: self.blob_path.clone(),
        })
    }

    /// Checks size and digest (deleting a partial that cannot become the
    /// blob) and fsyncs the data.
    fn verify_and_sync(&mut self, expected_size: u64, expected_digest: &Digest) -> Result<()> {
        if expected_digest != &self.digest {
            return Err(Error::IngestKeyMismatch {
                ingest: self.digest.clone(),
                commit: expected_digest.clone(),
            });
        }
        self.check_usable()?;
        self.ensure_digester()?;
        self.writer.flush().at(&self.data_path)?;
        if self.offset != expected_size {
            let err = Error::SizeMismatch {
                digest: self.digest.clone(),
                expected: expected_size,
                actual: self.offset,
            };
            if self.offset > expected_size {
                self.discard()?;
            }
            return Err(err);
        }
        let actual = self.digester.take().expect("ensured above").finish();
        if actual != self.digest {
            let err = Error::DigestMismatch {
                expected: self.digest.clone(),
                actual,
            };
            self.discard()?;
            return Err(err);
        }
        self.writer.get_ref().sync_data().at(&self.data_path)
    }

    /// Gives up: deletes the partial file (a later ingest starts from 0).
    pub fn abort(self) -> Result<()> {
        self.discard()
    }

    fn discard(&self) -> Result<()> {
        remove_file_if_exists(&self.data_path)?;
        self.lock.remove_file()
    }

    fn check_usable(&self) -> Result<()> {
        if self.broken {
            return Err(Error::IngestBroken {
                digest: self.digest.clone(),
            });
        }
        Ok(())
    }

    /// Hashes the resumed prefix, once.
    fn ensure_digester(&mut self) -> Result<()> {
        if self.digester.is_some() {
            return Ok(());
        }
        let mut digester = Digester::new(self.digest.algorithm());
        let file = File::open(&self.data_path).at(&self.data_path)?;
        let copied = io::copy(&mut file.take(self.offset), &mut digester).at(&self.data_path)?;
        if copied != self.offset {
            self.broken = true;
            return Err(Error::Io {
                path: self.data_path.clone(),
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("partial shrank from {} to {copied} bytes", self.offset),
                ),
            });
        }
        self.digester = Some(digester);
        Ok(())
    }
}

/// A verified blob set aside by [`Ingest::park`], not yet in the store.
#[derive(Debug)]
pub struct ParkedBlob {
    path: Option<tempfile::TempPath>,
    blob_path: PathBuf,
}

impl ParkedBlob {
    /// Moves the blob into `content/blobs/` (atomic rename, fsynced); when
    /// another process committed the same blob meanwhile, keeps that one.
    pub fn commit(mut self) -> Result<()> {
        let Some(path) = self.path.take() else {
            return Ok(());
        };
        if self.blob_path.is_file() {
            return Ok(()); // `path` deletes itself on drop
        }
        path.persist(&self.blob_path)
            .map_err(|e| e.error)
            .at(&self.blob_path)?;
        if let Some(dir) = self.blob_path.parent() {
            fsync_dir(dir)?;
        }
        Ok(())
    }
}

impl Write for Ingest {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ingest::write_all(self, buf).map_err(io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(store: &Store, digest: &Digest) -> Ingest {
        match store.ingest(digest).unwrap() {
            IngestOutcome::Writer(w) => w,
            IngestOutcome::Present { .. } => panic!("expected a writer for {digest}"),
        }
    }

    #[test]
    fn commit_under_another_digest_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = Digest::sha256_of(b"x");
        let mut w = writer(&store, &d);
        w.write_all(b"x").unwrap();
        let err = w.commit(1, &Digest::sha256_of(b"y")).unwrap_err();
        assert!(matches!(err, Error::IngestKeyMismatch { .. }), "{err}");
    }

    #[test]
    fn reset_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = Digest::sha256_of(b"right");
        let mut w = writer(&store, &d);
        w.write_all(b"wrong prefix").unwrap();
        drop(w);
        let mut w = writer(&store, &d);
        assert_eq!(w.offset(), 12);
        let mut prefix = Vec::new();
        w.prefix_reader().unwrap().read_to_end(&mut prefix).unwrap();
        assert_eq!(prefix, b"wrong prefix");
        w.reset().unwrap();
        assert_eq!(w.offset(), 0);
        w.write_all(b"right").unwrap();
        w.commit(5, &d).unwrap();
        assert_eq!(std::fs::read(store.blob_path(&d)).unwrap(), b"right");
    }

    #[test]
    fn abort_removes_the_partial() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = Digest::sha256_of(b"abc");
        let mut w = writer(&store, &d);
        w.write_all(b"ab").unwrap();
        w.abort().unwrap();
        let w = writer(&store, &d);
        assert_eq!(w.offset(), 0);
    }
}
