//! Placing one blob in a target repository: the algorithm `push` and
//! `copy` share.
//!
//! 1. `HEAD` it in the target: present means nothing to send
//!    ("Layer already exists").
//! 2. Mount it from another repository of the same registry that may hold
//!    it ("Mounted from REPO"); which ones to try is the caller's
//!    knowledge ([`BlobOrigin::mount_candidates`]: the store's distribution
//!    sources for a push, the run's other targets and the source for a
//!    copy). A refused mount is not fatal: the session the registry opened
//!    instead is kept for the upload. An attempt that already holds a
//!    session goes on with it and does not mount.
//! 3. Upload it from the caller's bytes ([`BlobOrigin::source`]: the stored
//!    blob, or the source registry's stream), with "Pushing" progress
//!    ("Pushed").
//!
//! Each step stops at once on cancellation; an upload session already open
//! is cancelled on the registry too.

use std::sync::Arc;

use haul_oci::Digest;
use haul_registry::{BlobSource, MountOutcome, Repository, ResumableUpload};
use haul_xfer::{ProgressOutput, Status};
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::push::upload::{or_cancelled, upload_blob, Chunking, ProgressSource};

/// How a blob came to be in its target repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placed {
    /// Its bytes were sent.
    Moved,
    /// The repository had it.
    Skipped,
    /// Linked from another repository of the registry.
    Mounted,
}

/// What the caller knows about a blob: where else on the target registry
/// it may be, and where its bytes are.
pub(crate) trait BlobOrigin: Sync {
    /// Repositories of the target registry (names without the registry) to
    /// try to mount from, in order.
    fn mount_candidates(
        &self,
        cancel: &CancellationToken,
    ) -> impl std::future::Future<Output = Result<Vec<String>>> + Send;

    /// The blob's bytes, readable from any offset.
    fn source(&self) -> Result<Box<dyn BlobSource + Send + Sync>>;
}

/// One blob bound for one target repository, and the upload session its
/// attempts share.
pub(crate) struct BlobTarget<'a> {
    /// The target repository.
    pub(crate) repo: &'a Repository,
    pub(crate) digest: &'a Digest,
    pub(crate) size: u64,
    pub(crate) chunking: Chunking,
    pub(crate) upload: &'a ResumableUpload,
    /// The id progress is shown under.
    pub(crate) id: String,
}

impl BlobTarget<'_> {
    /// HEAD, then mount, then upload; see the module docs.
    pub(crate) async fn place(
        &self,
        origin: &impl BlobOrigin,
        progress: &Arc<dyn ProgressOutput>,
        cancel: &CancellationToken,
    ) -> Result<Placed> {
        if self.exists(cancel).await? {
            progress.status(&self.id, Status::LayerAlreadyExists);
            return Ok(Placed::Skipped);
        }
        self.mount_or_upload(origin, progress, cancel).await
    }

    /// Whether the target repository has the blob. A check that fails
    /// (after the client's retries) is an error, not "absent".
    pub(crate) async fn exists(&self, cancel: &CancellationToken) -> Result<bool> {
        Ok(or_cancelled(cancel, self.repo.head_blob(self.digest))
            .await??
            .is_some())
    }

    /// Steps 2 and 3: mount from the first candidate that works, else upload.
    pub(crate) async fn mount_or_upload(
        &self,
        origin: &impl BlobOrigin,
        progress: &Arc<dyn ProgressOutput>,
        cancel: &CancellationToken,
    ) -> Result<Placed> {
        if self.upload.session().is_none() {
            for from in origin.mount_candidates(cancel).await? {
                if self.mount(&from, progress, cancel).await? {
                    return Ok(Placed::Mounted);
                }
                if self.upload.session().is_some() {
                    break;
                }
            }
        }
        self.upload_from(origin, progress, cancel).await?;
        Ok(Placed::Moved)
    }

    /// Mounts the blob from `repository` of the target registry: `false`
    /// when the registry refused (the session it opened instead is kept
    /// for the upload) or the mount failed.
    pub(crate) async fn mount(
        &self,
        repository: &str,
        progress: &Arc<dyn ProgressOutput>,
        cancel: &CancellationToken,
    ) -> Result<bool> {
        match or_cancelled(cancel, self.repo.mount_blob(self.digest, repository)).await? {
            Ok(MountOutcome::Mounted) => {
                progress.status(
                    &self.id,
                    Status::MountedFrom {
                        repository: repository.to_string(),
                    },
                );
                Ok(true)
            }
            Ok(MountOutcome::Upload(session)) => {
                self.upload.offer(session);
                Ok(false)
            }
            Err(e) => {
                tracing::debug!("mount of {} from {repository} failed: {e}", self.digest);
                Ok(false)
            }
        }
    }

    /// Step 3 alone: sends the bytes.
    pub(crate) async fn upload_from(
        &self,
        origin: &impl BlobOrigin,
        progress: &Arc<dyn ProgressOutput>,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let bytes = origin.source()?;
        let source = ProgressSource {
            inner: bytes.as_ref(),
            output: Arc::clone(progress),
            id: self.id.clone(),
            size: self.size,
        };
        upload_blob(
            self.repo,
            self.digest,
            self.size,
            &source,
            self.upload,
            self.chunking,
            cancel,
        )
        .await?;
        progress.status(&self.id, Status::Pushed);
        Ok(())
    }
}
