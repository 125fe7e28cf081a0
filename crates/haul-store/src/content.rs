//! Blob access: `content/blobs/ALG/HEX`, complete and verified by
//! construction (every blob arrives through an [`Ingest`](crate::Ingest)).

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;

use haul_oci::{Algorithm, Digest, Digester};

use crate::error::{Error, IoContext, Result};
use crate::ingest::IngestOutcome;
use crate::Store;

impl Store {
    /// Where the blob `digest` lives (or would live) in the OCI layout.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir(digest.algorithm().as_str())
            .join(digest.hex())
    }

    /// Whether the blob is in the store.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Opens a blob for reading.
    pub fn open_blob(&self, digest: &Digest) -> Result<File> {
        let path = self.blob_path(digest);
        File::open(&path).map_err(|e| not_found_or(e, digest, path))
    }

    /// The size of a blob in bytes.
    pub fn blob_size(&self, digest: &Digest) -> Result<u64> {
        let path = self.blob_path(digest);
        std::fs::metadata(&path)
            .map(|m| m.len())
            .map_err(|e| not_found_or(e, digest, path))
    }

    /// Reads a small blob (a manifest, a config) into memory, refusing one
    /// over `limit` bytes, and checks its digest again on the way.
    pub fn read_blob_limited(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>> {
        let file = self.open_blob(digest)?;
        let path = self.blob_path(digest);
        let size = file.metadata().at(&path)?.len();
        if size > limit {
            return Err(Error::BlobTooLarge {
                digest: digest.clone(),
                size,
                limit,
            });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        file.take(limit + 1).read_to_end(&mut bytes).at(&path)?;
        let actual = Digest::of(digest.algorithm(), &bytes);
        if &actual != digest {
            return Err(Error::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Stores a small blob held in memory (a manifest, a config) after
    /// checking it hashes to `expected`. Goes through the same ingest door
    /// as downloads; a blob already present is left as it is.
    pub fn put_blob_bytes(&self, bytes: &[u8], expected: &Digest) -> Result<()> {
        let actual = Digest::of(expected.algorithm(), bytes);
        if &actual != expected {
            return Err(Error::DigestMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        match self.ingest(expected)? {
            IngestOutcome::Present { .. } => Ok(()),
            IngestOutcome::Writer(mut writer) => {
                writer.reset()?;
                writer.write_all(bytes)?;
                writer.commit(bytes.len() as u64, expected)
            }
        }
    }

    /// Stores a blob made here (a layer compressed for a push) whose digest
    /// is learnt by writing it: `write` fills a temporary file in the store,
    /// which is hashed, fsynced and renamed into place. Returns the blob's
    /// digest and size; nothing is left behind when `write` fails.
    pub fn add_blob_from(
        &self,
        write: impl FnOnce(&mut dyn io::Write) -> io::Result<()>,
    ) -> Result<(Digest, u64)> {
        let tmp_dir = self.tmp_dir();
        let tmp = tempfile::NamedTempFile::new_in(&tmp_dir).at(&tmp_dir)?;
        let tmp_path = tmp.path().to_path_buf();
        let file = tmp.reopen().at(&tmp_path)?;
        let mut hashing = HashingWriter {
            inner: io::BufWriter::with_capacity(256 * 1024, file),
            digester: Digester::new(Algorithm::Sha256),
            size: 0,
        };
        write(&mut hashing).at(&tmp_path)?;
        let HashingWriter {
            inner,
            digester,
            size,
        } = hashing;
        inner
            .into_inner()
            .map_err(|e| e.into_error())
            .at(&tmp_path)?
            .sync_all()
            .at(&tmp_path)?;
        let digest = digester.finish();
        let path = self.blob_path(&digest);
        if !path.is_file() {
            tmp.persist(&path).map_err(|e| e.error).at(&path)?;
            crate::fsutil::fsync_dir(&self.blobs_dir(digest.algorithm().as_str()))?;
        }
        Ok((digest, size))
    }

    /// Every blob digest in the content store (any order).
    pub fn list_blobs(&self) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
            let dir = self.blobs_dir(algorithm.as_str());
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).at(&dir),
            };
            for entry in entries {
                let entry = entry.at(&dir)?;
                if let Some(hex) = entry.file_name().to_str() {
                    if let Ok(d) = Digest::new(algorithm, hex) {
                        out.push(d);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Re-hashes a stored blob and checks it still has its digest (a
    /// corruption check, for `fsck`-like callers).
    pub fn verify_blob(&self, digest: &Digest) -> Result<()> {
        let mut file = self.open_blob(digest)?;
        let mut digester = Digester::new(digest.algorithm());
        io::copy(&mut file, &mut digester).at(&self.blob_path(digest))?;
        let actual = digester.finish();
        if &actual == digest {
            Ok(())
        } else {
            Err(Error::DigestMismatch {
                expected: digest.clone(),
                actual,
            })
        }
    }
}

fn not_found_or(e: io::Error, digest: &Digest, path: PathBuf) -> Error {
    if e.kind() == io::ErrorKind::NotFound {
        Error::BlobNotFound {
            digest: digest.clone(),
        }
    } else {
        Error::Io { path, source: e }
    }
}

/// A writer that hashes and counts what passes through it.
struct HashingWriter<W> {
    inner: W,
    digester: Digester,
    size: u64,
}

impl<W: io::Write> io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.digester.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
