//! Sending one blob to a registry: monolithic for small blobs, chunked for
//! big ones (so an interrupted upload goes on from the offset the registry
//! holds instead of starting over), with "Pushing" progress.

use std::pin::Pin;
use std::sync::Arc;

use haul_oci::Digest;
use haul_registry::{BlobSource, Repository, UploadSession};
use haul_xfer::{ProgressOutput, ProgressReader};
use tokio::io::AsyncRead;

use crate::error::Result;

/// Blobs above this size are sent in chunks, by default.
pub const DEFAULT_CHUNKED_ABOVE: u64 = 256 * 1024 * 1024;
/// Size of one chunk, by default. Chunks stream from the source, so their
/// size costs no memory; each costs a round trip, and an interrupted upload
/// goes on from the last chunk the registry took.
pub const DEFAULT_CHUNK_SIZE: usize = 256 * 1024 * 1024;

/// A blob source that reports "Pushing" progress as it is read.
pub(crate) struct ProgressSource<'a> {
    pub inner: &'a dyn BlobSource,
    pub output: Arc<dyn ProgressOutput>,
    pub id: String,
    pub size: u64,
}

impl BlobSource for ProgressSource<'_> {
    fn open(&self, offset: u64) -> std::io::Result<Pin<Box<dyn AsyncRead + Send>>> {
        let reader = self.inner.open(offset)?;
        Ok(Box::pin(ProgressReader::new(
            reader,
            Arc::clone(&self.output),
            self.id.clone(),
            "Pushing",
            self.size,
        )))
    }
}

/// When blobs are chunked, and how big the chunks are.
#[derive(Debug, Clone, Copy)]
pub struct Chunking {
    /// Blobs larger than this go in chunks.
    pub above: u64,
    /// Bytes per chunk.
    pub size: usize,
}

impl Default for Chunking {
    fn default() -> Self {
        Self {
            above: DEFAULT_CHUNKED_ABOVE,
            size: DEFAULT_CHUNK_SIZE,
        }
    }
}

/// Uploads `size` bytes of `source` as blob `digest`, continuing `session`
/// when the caller has one (a mount that fell back to an upload).
pub(crate) async fn upload_blob(
    repo: &Repository,
    digest: &Digest,
    size: u64,
    source: &dyn BlobSource,
    session: Option<UploadSession>,
    chunking: Chunking,
) -> Result<()> {
    match session {
        Some(session) => {
            repo.continue_chunked(session, digest, size, source, chunking.size)
                .await?
        }
        None if size > chunking.above => {
            repo.upload_chunked(digest, size, source, chunking.size)
                .await?
        }
        None => repo.upload_monolithic(digest, size, source).await?,
    }
    Ok(())
}
