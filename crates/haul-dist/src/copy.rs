//! `copy`: an image from one registry to another, streamed. Blobs go in
//! parallel through the upload manager (deduplicated, retried); a blob the
//! target has is skipped, one on the same registry is mounted, the others
//! stream from source to target without touching the disk. Manifests keep
//! their exact bytes, so the copy's digest is the source's.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use haul_oci::{Digest, Manifest, ParsedManifest, Platform, Reference};
use haul_registry::{BlobSource, MountOutcome, RegistryClient, Repository, ResumableUpload};
use haul_xfer::{
    short_id, ProgressOutput, RemoteDescriptor, RetryPolicy, UploadDescriptor, UploadManager,
};
use tokio::io::AsyncRead;
use tokio_util::sync::CancellationToken;

use crate::blob_upload::{or_cancelled, upload_blob, Chunking, ProgressSource};
use crate::error::{Error, Result};
use crate::pull_layer::into_transfer_error;
use crate::push::PushSettings;
use crate::resolve::{fetch_manifest, manifest_reference};

/// What to copy of a reference.
#[derive(Debug, Clone, Default)]
pub struct CopyOptions {
    /// The platform to take from an index (default: this machine's).
    pub platform: Option<Platform>,
    /// Copy the whole index with every platform.
    pub all_platforms: bool,
}

/// What a copy did.
#[derive(Debug, Clone)]
pub struct CopyReport {
    /// Digest of what the target reference now names.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
}

/// Copies images between registries.
pub struct Copier {
    client: RegistryClient,
    uploads: UploadManager,
    chunking: Chunking,
}

impl Copier {
    /// A copier using `client` for both sides.
    pub fn new(client: RegistryClient, settings: &PushSettings) -> Self {
        let uploads = UploadManager::new()
            .with_concurrency(settings.max_concurrent_uploads)
            .with_retry_policy(RetryPolicy::default().with_tick(settings.retry_tick));
        Self {
            client,
            uploads,
            chunking: settings.chunking,
        }
    }

    /// Copies `source` to `target`.
    #[tracing::instrument(name = "copy", skip_all, fields(from = %source, to = %target))]
    pub async fn copy(
        &self,
        source: &Reference,
        target: &Reference,
        options: &CopyOptions,
        output: Arc<dyn ProgressOutput>,
        cancel: CancellationToken,
    ) -> Result<CopyReport> {
        let from = self.client.repository_for(source)?;
        let to = self.client.repository_for(target)?;
        output.message(
            "",
            &format!("Copying {} to {}", source.familiar(), target.familiar()),
        );
        let top = fetch_manifest(&from, &manifest_reference(source)).await?;
        let tag = target
            .tag()
            .map(str::to_string)
            .or_else(|| target.digest().map(|d| d.to_string()));
        let chosen = match top.manifest() {
            Manifest::Image(_) => top.clone(),
            Manifest::Index(index) if options.all_platforms => {
                for entry in index.manifests() {
                    let child = fetch_manifest(&from, entry.digest().as_ref()).await?;
                    self.copy_image(&from, &to, &child, &output, &cancel)
                        .await?;
                    to.put_manifest(
                        child.digest().as_str(),
                        child.media_type(),
                        Bytes::copy_from_slice(child.bytes()),
                    )
                    .await?;
                }
                top.clone()
            }
            Manifest::Index(index) => {
                let wanted = options.platform.clone().unwrap_or_else(Platform::host);
                let entry = haul_oci::select_manifest(index, &wanted)?;
                fetch_manifest(&from, entry.digest().as_ref()).await?
            }
            Manifest::Schema1(_) => {
                return Err(Error::Unsupported {
                    reference: source.to_string(),
                    message: "Docker schema 1 manifests cannot be copied".into(),
                });
            }
        };
        if matches!(chosen.manifest(), Manifest::Image(_)) {
            self.copy_image(&from, &to, &chosen, &output, &cancel)
                .await?;
        }
        let name = tag.clone().unwrap_or_else(|| chosen.digest().to_string());
        let digest = to
            .put_manifest(
                &name,
                chosen.media_type(),
                Bytes::copy_from_slice(chosen.bytes()),
            )
            .await?;
        output.message(
            "",
            &format!("{name}: digest: {digest} size: {}", chosen.size()),
        );
        Ok(CopyReport {
            digest,
            size: chosen.size(),
        })
    }

    async fn copy_image(
        &self,
        from: &Repository,
        to: &Repository,
        manifest: &ParsedManifest,
        output: &Arc<dyn ProgressOutput>,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let image = manifest.manifest();
        let blobs = image
            .config()
            .into_iter()
            .chain(image.layers().unwrap_or(&[]).iter().rev());
        let target = format!("{}/{}", to.registry(), to.name());
        let mut descriptors = Vec::new();
        for blob in blobs {
            descriptors.push(Arc::new(CopyBlob {
                from: from.clone(),
                to: to.clone(),
                target: target.clone(),
                digest: Digest::try_from(blob.digest())?,
                size: blob.size(),
                media_type: blob.media_type().to_string(),
                chunking: self.chunking,
                upload: ResumableUpload::new(),
            }));
        }
        self.uploads
            .upload(cancel, &descriptors, Arc::clone(output))
            .await?;
        Ok(())
    }
}

/// One blob of a copy.
struct CopyBlob {
    from: Repository,
    to: Repository,
    target: String,
    digest: Digest,
    size: u64,
    media_type: String,
    chunking: Chunking,
    /// The upload session across this layer's attempts.
    upload: ResumableUpload,
}

/// A blob read from a registry, from any offset, unverified: the target
/// registry checks the digest of what it receives.
struct RegistrySource {
    repo: Repository,
    digest: Digest,
    size: u64,
}

impl BlobSource for RegistrySource {
    fn open(&self, offset: u64) -> std::io::Result<Pin<Box<dyn AsyncRead + Send>>> {
        let stream = self
            .repo
            .blob_stream_unverified(&self.digest, Some(self.size), offset)
            .map_err(std::io::Error::other);
        Ok(Box::pin(tokio_util::io::StreamReader::new(stream)))
    }
}

impl CopyBlob {
    async fn copy(
        &self,
        progress: &Arc<dyn ProgressOutput>,
        cancel: &CancellationToken,
    ) -> Result<RemoteDescriptor> {
        let id = self.id();
        let remote = RemoteDescriptor {
            digest: self.digest.to_string(),
            size: self.size,
            media_type: self.media_type.clone(),
        };
        if or_cancelled(cancel, self.to.head_blob(&self.digest))
            .await??
            .is_some()
        {
            progress.update(&id, "Layer already exists");
            return Ok(remote);
        }
        if self.from.registry() == self.to.registry() && self.upload.session().is_none() {
            // A refused mount (no pull right on the source, say) is not
            // fatal: the blob is then streamed like any other.
            match or_cancelled(cancel, self.to.mount_blob(&self.digest, self.from.name())).await? {
                Ok(MountOutcome::Mounted) => {
                    progress.update(&id, &format!("Mounted from {}", self.from.name()));
                    return Ok(remote);
                }
                Ok(MountOutcome::Upload(s)) => self.upload.offer(s),
                Err(e) => tracing::debug!("mount of {} failed, streaming it: {e}", self.digest),
            }
        }
        let source = RegistrySource {
            repo: self.from.clone(),
            digest: self.digest.clone(),
            size: self.size,
        };
        let source = ProgressSource {
            inner: &source,
            output: Arc::clone(progress),
            id: id.clone(),
            size: self.size,
        };
        upload_blob(
            &self.to,
            &self.digest,
            self.size,
            &source,
            &self.upload,
            self.chunking,
            cancel,
        )
        .await?;
        progress.update(&id, "Pushed");
        Ok(remote)
    }
}

impl UploadDescriptor for CopyBlob {
    fn key(&self) -> String {
        format!("copy:{} {}", self.target, self.digest)
    }

    fn id(&self) -> String {
        short_id(self.digest.as_str()).to_string()
    }

    async fn upload(
        &self,
        cancel: CancellationToken,
        progress: Arc<dyn ProgressOutput>,
    ) -> Result<RemoteDescriptor, haul_xfer::Error> {
        // Every step stops at once on cancellation; an upload session
        // already open is cancelled on the registry too.
        self.copy(&progress, &cancel)
            .await
            .map_err(into_transfer_error)
    }

    fn set_remote_descriptor(&self, _descriptor: RemoteDescriptor) {}
}
