//! Sending one blob to a registry: monolithic for small blobs, chunked for
//! big ones, with "Pushing" progress. Each call is one attempt of the
//! layer's transfer: a failed one is retried by the upload manager (with
//! its countdown) and goes on from the offset the registry holds, or
//! starts over in a fresh session when the registry dropped the old one.

use std::pin::Pin;
use std::sync::Arc;

use haul_oci::Digest;
use haul_registry::{BlobSource, Repository, ResumableUpload};
use haul_xfer::{ProgressOutput, ProgressReader, Status};
use tokio::io::AsyncRead;

use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// Blobs above this size are sent in chunks, by default.
pub(crate) const DEFAULT_CHUNKED_ABOVE: u64 = 16 * 1024 * 1024;
/// Size of one chunk, by default. Chunks stream from the source, so their
/// size costs no memory. A 5xx on a chunk re-sends that chunk only, so this
/// bounds what one refused request wastes (a blob at most this big goes in
/// one `PUT`, with the same bound). Measured against distribution 2.8 on
/// loopback, 256 MiB blob: 16 MiB chunks ran within ~5% of one `PUT`
/// (267 vs 270-290 MB/s), 8 MiB ~10% slower, 4 MiB far slower (each
/// request makes the registry reload and store its hash state).
pub(crate) const DEFAULT_CHUNK_SIZE: usize = 16 * 1024 * 1024;

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
            Status::Pushing,
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

/// One attempt at uploading `size` bytes of `source` as blob `digest`,
/// continuing what earlier attempts on `upload` left (the registry's
/// session, at the offset it holds; a fresh session when it dropped it).
/// A failure is returned for the layer's retry (with its countdown).
///
/// Stops as soon as `cancel` fires: the request in flight is dropped (no
/// more bytes go out) and the registry's upload session is cancelled
/// (`DELETE`), then [`Error::Cancelled`] is returned.
pub(crate) async fn upload_blob(
    repo: &Repository,
    digest: &Digest,
    size: u64,
    source: &dyn BlobSource,
    upload: &ResumableUpload,
    chunking: Chunking,
    cancel: &CancellationToken,
) -> Result<()> {
    let chunk_size = (size > chunking.above).then_some(chunking.size as u64);
    tokio::select! {
        biased;
        _ = cancel.cancelled() => {
            if let Some(session) = upload.session() {
                if let Err(e) = repo.cancel_upload(session).await {
                    tracing::debug!("cancelling the upload session of {digest}: {e}");
                }
            }
            Err(Error::Cancelled)
        }
        done = repo.upload_resumable(upload, digest, size, source, chunk_size) => Ok(done?),
    }
}

/// `work`, unless `cancel` fires first: then [`Error::Cancelled`] (the
/// request in flight is dropped).
pub(crate) async fn or_cancelled<T, E: Into<Error>>(
    cancel: &CancellationToken,
    work: impl std::future::Future<Output = std::result::Result<T, E>>,
) -> Result<std::result::Result<T, Error>> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(Error::Cancelled),
        done = work => Ok(done.map_err(Into::into)),
    }
}
