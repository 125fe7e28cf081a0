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

/// Blobs above this size are sent in chunks.
pub(crate) const CHUNKED_ABOVE: u64 = 64 * 1024 * 1024;
/// Size of one chunk (held in memory while it is sent).
pub(crate) const CHUNK_SIZE: usize = 8 * 1024 * 1024;

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

/// Uploads `size` bytes of `source` as blob `digest`, continuing `session`
/// when the caller has one (a mount that fell back to an upload).
pub(crate) async fn upload_blob(
    repo: &Repository,
    digest: &Digest,
    size: u64,
    source: &dyn BlobSource,
    session: Option<UploadSession>,
) -> Result<()> {
    match session {
        Some(session) => {
            repo.continue_chunked(session, digest, size, source, CHUNK_SIZE)
                .await?
        }
        None if size > CHUNKED_ABOVE => {
            repo.upload_chunked(digest, size, source, CHUNK_SIZE)
                .await?
        }
        None => repo.upload_monolithic(digest, size, source).await?,
    }
    Ok(())
}
