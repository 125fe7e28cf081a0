//! Sending one blob to a registry: monolithic for small blobs, chunked for
//! big ones (so an interrupted upload goes on from the offset the registry
//! holds instead of starting over), with "Pushing" progress.

use std::pin::Pin;
use std::sync::Arc;

use haul_oci::Digest;
use haul_registry::{BlobSource, Repository, UploadSession};
use haul_xfer::{ProgressOutput, ProgressReader};
use tokio::io::AsyncRead;

use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

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
///
/// Stops as soon as `cancel` fires: the request in flight is dropped (no
/// more bytes go out) and the registry's upload session is cancelled
/// (`DELETE`), then [`Error::Cancelled`] is returned.
pub(crate) async fn upload_blob(
    repo: &Repository,
    digest: &Digest,
    size: u64,
    source: &dyn BlobSource,
    session: Option<UploadSession>,
    chunking: Chunking,
    cancel: &CancellationToken,
) -> Result<()> {
    if cancel.is_cancelled() {
        if let Some(session) = session {
            let _ = repo.cancel_upload(session).await;
        }
        return Err(Error::Cancelled);
    }
    let given = session.is_some();
    let session = match session {
        Some(session) => session,
        None => tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(Error::Cancelled),
            session = repo.start_upload() => session?,
        },
    };
    let opened = session.clone();
    let upload = async {
        if given || size > chunking.above {
            repo.continue_chunked(session, digest, size, source, chunking.size)
                .await
        } else {
            repo.upload_monolithic_on(session, digest, size, source)
                .await
        }
    };
    tokio::select! {
        biased;
        _ = cancel.cancelled() => {
            // A session that moved on (chunks taken) may have a newer
            // location; the registry then refuses this one and frees the
            // session itself later.
            if let Err(e) = repo.cancel_upload(opened).await {
                tracing::debug!("cancelling the upload session of {digest}: {e}");
            }
            Err(Error::Cancelled)
        }
        done = upload => Ok(done?),
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
