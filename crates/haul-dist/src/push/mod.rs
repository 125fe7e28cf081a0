//! `push`: a local image to a registry, through the upload manager.
//!
//! Layers go in parallel: a layer the target repository already has is
//! only confirmed ("Layer already exists"), one that another repository of
//! the same registry holds is mounted ("Mounted from REPO"), the others are
//! uploaded from the stored blob ("Pushing", "Pushed"). Then the config and
//! the manifest, with their exact stored bytes, so the digest the registry
//! reports is the local one; for an image pulled with every platform, the
//! other platforms' manifests and then the index.

pub(crate) mod blob;
pub(crate) mod compress;
pub(crate) mod referrers;
pub(crate) mod upload;
pub(crate) mod v1;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use haul_oci::{Digest, Reference};
use haul_registry::{
    BlobSource, FileSource, RegistryClient, Repository, ResumableUpload, UploadSession,
};
use haul_store::{ImageLayer, ImageRecord, Store, UploadRecord};
use haul_xfer::{
    short_id, Message, ProgressOutput, RemoteDescriptor, RetryPolicy, UploadDescriptor,
    UploadManager,
};
use tokio_util::sync::CancellationToken;

use crate::error::into_transfer_error;
use crate::error::{Error, Result};
use crate::protocol::{speaks_v1, Protocol};
use crate::push::blob::{BlobOrigin, BlobTarget};
use crate::push::compress::{compressed_image, compresses, PushCompression};
use crate::push::upload::Chunking;
use crate::push::v1::{V1PushReport, V1Pusher};
use crate::referrers::ReferrerOptions;
use crate::task::blocking;

/// How a [`Pusher`] transfers layers.
#[derive(Debug, Clone)]
pub struct PushSettings {
    /// Layers uploading at once (0 = unlimited).
    pub max_concurrent_uploads: usize,
    /// One tick of the retry countdown (1 s; tests use less).
    pub retry_tick: Duration,
    /// When blobs go in chunks.
    pub chunking: Chunking,
    /// How plain tar layers are compressed: `None` compresses only those of
    /// manifests haul wrote (docker-archive images), with gzip; a value
    /// compresses every plain layer so.
    pub compression: Option<PushCompression>,
    /// The registry protocol: v2, v1, or (the default) v1 only for a
    /// registry without the v2 API.
    pub protocol: Protocol,
}

impl Default for PushSettings {
    fn default() -> Self {
        Self {
            max_concurrent_uploads: 5,
            retry_tick: Duration::from_secs(1),
            chunking: Chunking::default(),
            compression: None,
            protocol: Protocol::default(),
        }
    }
}

/// What a push did, by protocol.
#[derive(Debug, Clone)]
pub enum Pushed {
    /// A v2 push: the manifest (or index) the tag now names.
    Manifest(PushReport),
    /// A v1 push, which has no manifests.
    V1(V1PushReport),
}

impl Pushed {
    /// The manifest pushed, for a v2 push.
    pub fn manifest(&self) -> Option<&PushReport> {
        match self {
            Pushed::Manifest(report) => Some(report),
            Pushed::V1(_) => None,
        }
    }
}

/// What a v2 push put.
#[derive(Debug, Clone)]
pub struct PushReport {
    /// Digest of what the tag now names (manifest or index).
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// The referrers pushed after it (every level).
    pub referrers: Vec<Digest>,
    /// The cosign digest tags pushed after it.
    pub digest_tags: Vec<String>,
}

/// Pushes local images. One `Pusher` shares its transfers between pushes.
pub struct Pusher {
    client: RegistryClient,
    store: Store,
    uploads: UploadManager,
    chunking: Chunking,
    compression: Option<PushCompression>,
    protocol: Protocol,
    /// Pushes to registries spoken to in v1.
    v1: V1Pusher,
}

impl Pusher {
    /// A pusher reading from `store`.
    pub fn new(client: RegistryClient, store: Store, settings: &PushSettings) -> Self {
        let uploads = UploadManager::new()
            .with_concurrency(settings.max_concurrent_uploads)
            .with_retry_policy(RetryPolicy::default().with_tick(settings.retry_tick));
        Self {
            v1: V1Pusher::new(client.clone(), store.clone(), settings),
            client,
            store,
            uploads,
            chunking: settings.chunking,
            compression: settings.compression,
            protocol: settings.protocol,
        }
    }

    /// Pushes the local image `reference` names to that reference, in the
    /// protocol of [`PushSettings::protocol`].
    pub async fn push(
        &self,
        reference: &Reference,
        output: Arc<dyn ProgressOutput>,
        cancel: CancellationToken,
    ) -> Result<Pushed> {
        self.push_with(reference, &ReferrerOptions::default(), output, cancel)
            .await
    }

    /// Pushes the local image `reference` names to that reference, and
    /// after it the stored referrers of every manifest pushed that
    /// `referrers` asks for (v2 only: v1 registries know no referrers).
    #[tracing::instrument(name = "push", skip_all, fields(image = %reference))]
    pub async fn push_with(
        &self,
        reference: &Reference,
        referrers: &ReferrerOptions,
        output: Arc<dyn ProgressOutput>,
        cancel: CancellationToken,
    ) -> Result<Pushed> {
        if speaks_v1(
            &self.client,
            reference,
            self.protocol,
            !referrers.is_empty(),
            output.as_ref(),
        )
        .await?
        {
            return Ok(Pushed::V1(self.v1.push(reference, output, cancel).await?));
        }
        Ok(Pushed::Manifest(
            self.push_v2(reference, referrers, output, cancel).await?,
        ))
    }

    async fn push_v2(
        &self,
        reference: &Reference,
        referrers: &ReferrerOptions,
        output: Arc<dyn ProgressOutput>,
        cancel: CancellationToken,
    ) -> Result<PushReport> {
        // Holding a lease keeps gc from taking what this push adds (the
        // blobs and manifest of a compressed image) before it is named.
        let _lease = {
            let store = self.store.clone();
            blocking(move || Ok(store.lease()?)).await?
        };
        let resolved = {
            let store = self.store.clone();
            let r = reference.clone();
            blocking(move || Ok(store.resolve(&r)?)).await?
        }
        .ok_or_else(|| Error::NotLocal(reference.familiar()))?;
        let repo = self.client.repository_for(reference)?;
        let images = self.images_of_index(resolved.index).await?;
        let source = resolved.image.clone();
        let source_digest = source.manifest_digest.clone();
        let image = if images.is_none() && compresses(&source, self.compression) {
            let store = self.store.clone();
            let repository = format!("{}/{}", repo.registry(), repo.name());
            let compression = self.compression.unwrap_or_default();
            blocking(move || compressed_image(&store, &source, compression, &repository)).await?
        } else {
            resolved.image
        };
        output.message(
            "",
            Message::PushRefersTo {
                repository: reference.name().to_string(),
            },
        );

        let to_push: Vec<&ImageRecord> = match &images {
            Some((_, all)) => all.iter().collect(),
            None => vec![&image],
        };
        // Every layer of every image, once, top layers first as Docker shows.
        let mut seen = HashSet::new();
        let layers: Vec<ImageLayer> = to_push
            .iter()
            .flat_map(|i| i.layers.iter().rev())
            .filter(|l| seen.insert(l.digest.clone()))
            .cloned()
            .collect();
        self.push_layers(&repo, &layers, &output, &cancel).await?;

        for image in &to_push {
            self.push_config(&repo, image).await?;
        }
        let tag = reference.tag().map(str::to_string);
        let mut pushed: Vec<Digest> = match &images {
            Some((index, all)) => std::iter::once(index.0.clone())
                .chain(all.iter().map(|i| i.manifest_digest.clone()))
                .collect(),
            None => vec![image.manifest_digest.clone()],
        };
        pushed.dedup();
        let (digest, size) = match &images {
            Some((index, all)) => {
                for image in all {
                    self.push_manifest(&repo, image, image.manifest_digest.as_str())
                        .await?;
                }
                let bytes = self.read_blob(&index.0).await?;
                let target = tag.clone().unwrap_or_else(|| index.0.to_string());
                let size = bytes.len() as u64;
                let digest = repo
                    .put_manifest(&target, &index.1, Bytes::from(bytes))
                    .await?;
                (digest, size)
            }
            None => {
                let target = tag
                    .clone()
                    .unwrap_or_else(|| image.manifest_digest.to_string());
                let digest = self.push_manifest(&repo, &image, &target).await?;
                if image.manifest_digest != source_digest {
                    // The compressed manifest is what this repository now
                    // serves: the reference pushed names it from now on,
                    // and so does a digest reference, as Docker records a
                    // pushed image's repository digest.
                    let store = self.store.clone();
                    let reference = reference.clone();
                    let by_digest = reference.without_tag().with_digest(digest.clone());
                    let target = image.target();
                    blocking(move || {
                        if reference.digest().is_none() {
                            store.tag(&reference, &target)?;
                        }
                        store.tag(&by_digest, &target)?;
                        Ok(())
                    })
                    .await?;
                }
                (digest, image.manifest_size)
            }
        };
        output.message(
            "",
            Message::ManifestPushed {
                tag: tag.clone(),
                digest: digest.to_string(),
                size,
            },
        );
        let done = if !referrers.is_empty() {
            crate::push::referrers::ReferrerPush {
                repo: &repo,
                store: &self.store,
                chunking: self.chunking,
                output: &output,
                cancel: &cancel,
            }
            .run(&pushed, referrers)
            .await?
        } else {
            Default::default()
        };
        Ok(PushReport {
            digest,
            size,
            referrers: done.digests,
            digest_tags: done.digest_tags,
        })
    }

    /// For a reference to an index pulled with every platform: the index
    /// (digest, media type) and every image it lists, when all of them are
    /// stored.
    async fn images_of_index(
        &self,
        index: Option<Digest>,
    ) -> Result<Option<((Digest, String), Vec<ImageRecord>)>> {
        let Some(index_digest) = index else {
            return Ok(None);
        };
        let store = self.store.clone();
        blocking(move || {
            if !store.has_blob(&index_digest) {
                return Ok(None);
            }
            let bytes =
                store.read_blob_limited(&index_digest, haul_registry::MANIFEST_LIMIT as u64)?;
            let parsed = haul_oci::parse_manifest(bytes, None)?;
            let Some(children) = store.index_children(&index_digest)? else {
                return Ok(None);
            };
            let mut images = Vec::new();
            for child in children {
                match store.get_image(&child)? {
                    Some(image) => images.push(image),
                    // A platform (or attestation) that was not pulled: push
                    // the single image, not an index naming what is absent.
                    None => return Ok(None),
                }
            }
            Ok(Some((
                (index_digest, parsed.media_type().to_string()),
                images,
            )))
        })
        .await
    }

    async fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        let store = self.store.clone();
        let digest = digest.clone();
        blocking(
            move || Ok(store.read_blob_limited(&digest, haul_registry::MANIFEST_LIMIT as u64)?),
        )
        .await
    }

    async fn push_layers(
        &self,
        repo: &Repository,
        layers: &[ImageLayer],
        output: &Arc<dyn ProgressOutput>,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let target = format!("{}/{}", repo.registry(), repo.name());
        let descriptors: Vec<Arc<PushLayer>> = layers
            .iter()
            .map(|layer| {
                Arc::new(PushLayer {
                    repo: repo.clone(),
                    store: self.store.clone(),
                    layer: layer.clone(),
                    target: target.clone(),
                    chunking: self.chunking,
                    upload: recorded_upload(&self.store, &target, &layer.digest),
                })
            })
            .collect();
        self.uploads
            .upload(cancel, &descriptors, Arc::clone(output))
            .await?;
        Ok(())
    }

    async fn push_config(&self, repo: &Repository, image: &ImageRecord) -> Result<()> {
        if repo.head_blob(&image.id).await?.is_some() {
            return Ok(());
        }
        let bytes = Bytes::from(self.read_blob(&image.id).await?);
        repo.upload_monolithic(&image.id, bytes.len() as u64, &bytes)
            .await?;
        Ok(())
    }

    async fn push_manifest(
        &self,
        repo: &Repository,
        image: &ImageRecord,
        target: &str,
    ) -> Result<Digest> {
        let bytes = self.read_blob(&image.manifest_digest).await?;
        let digest = repo
            .put_manifest(target, &image.manifest_media_type, Bytes::from(bytes))
            .await?;
        if digest != image.manifest_digest {
            return Err(Error::Inconsistent {
                reference: target.to_string(),
                message: format!(
                    "the registry stored manifest {digest}, not the local {}",
                    image.manifest_digest
                ),
            });
        }
        Ok(digest)
    }
}

/// An upload of `digest` to `target` that records its session in the
/// store as it goes, continuing the session an earlier (killed) push
/// recorded: the registry is asked where that session stands first.
pub(crate) fn recorded_upload(store: &Store, target: &str, digest: &Digest) -> ResumableUpload {
    let observer = {
        let (store, target, digest) = (store.clone(), target.to_string(), digest.clone());
        move |session: Option<&UploadSession>| {
            let result = match session {
                Some(s) => store.record_upload(
                    &target,
                    &digest,
                    &UploadRecord {
                        location: s.location().to_string(),
                        offset: s.offset(),
                    },
                ),
                None => store.forget_upload(&target, &digest),
            };
            if let Err(e) = result {
                tracing::debug!("cannot record the upload session of {digest}: {e}");
            }
        }
    };
    let upload = ResumableUpload::new().with_observer(Box::new(observer));
    if let Ok(Some(record)) = store.recorded_upload(target, digest) {
        if let Some(session) = UploadSession::known(&record.location, record.offset) {
            upload.offer(session);
        }
    }
    upload
}

/// One layer of a push.
struct PushLayer {
    repo: Repository,
    store: Store,
    layer: ImageLayer,
    /// `registry/repository` pushed to.
    target: String,
    chunking: Chunking,
    /// The upload session across this layer's attempts.
    upload: ResumableUpload,
}

impl PushLayer {
    fn remote(&self) -> RemoteDescriptor {
        RemoteDescriptor {
            digest: self.layer.digest.to_string(),
            size: self.layer.size,
            media_type: self.layer.media_type.clone(),
        }
    }

    async fn record_source(&self) {
        let store = self.store.clone();
        let (diff, blob, target) = (
            self.layer.diff_id.clone(),
            self.layer.digest.clone(),
            self.target.clone(),
        );
        let recorded = blocking(move || {
            store.forget_upload(&target, &blob)?;
            Ok(store.add_distribution_source(&diff, &blob, &target)?)
        })
        .await;
        if let Err(e) = recorded {
            tracing::warn!(
                "cannot record that {} has {}: {e}",
                self.target,
                self.layer.digest
            );
        }
    }

    async fn push(
        &self,
        progress: &Arc<dyn ProgressOutput>,
        cancel: &CancellationToken,
    ) -> Result<RemoteDescriptor> {
        let target = BlobTarget {
            repo: &self.repo,
            digest: &self.layer.digest,
            size: self.layer.size,
            chunking: self.chunking,
            upload: &self.upload,
            id: self.id(),
        };
        target.place(self, progress, cancel).await?;
        self.record_source().await;
        Ok(self.remote())
    }
}

/// A push knows where a layer's blob went before (the store's distribution
/// sources), and reads it from the store.
impl BlobOrigin for PushLayer {
    async fn mount_candidates(&self, _cancel: &CancellationToken) -> Result<Vec<String>> {
        let sources = {
            let store = self.store.clone();
            let diff = self.layer.diff_id.clone();
            blocking(move || Ok(store.distribution_sources(&diff)?)).await?
        };
        let prefix = format!("{}/", self.repo.registry());
        Ok(sources
            .iter()
            .filter(|s| s.digest == self.layer.digest && s.repository != self.target)
            .filter_map(|s| s.repository.strip_prefix(&prefix))
            .map(str::to_string)
            .collect())
    }

    fn source(&self) -> Result<Box<dyn BlobSource + Send + Sync>> {
        let digest = &self.layer.digest;
        if !self.store.has_blob(digest) {
            return Err(Error::Inconsistent {
                reference: self.target.clone(),
                message: format!(
                    "layer {digest} is not in the local store (a store written by an older haul kept only the unpacked layer; pull the image again)"
                ),
            });
        }
        Ok(Box::new(FileSource(self.store.blob_path(digest))))
    }
}

impl UploadDescriptor for PushLayer {
    fn key(&self) -> String {
        format!("v2push:{} {}", self.target, self.layer.digest)
    }

    fn id(&self) -> String {
        short_id(self.layer.diff_id.as_str()).to_string()
    }

    async fn upload(
        &self,
        cancel: CancellationToken,
        progress: Arc<dyn ProgressOutput>,
    ) -> Result<RemoteDescriptor, haul_xfer::Error> {
        // Every step stops at once on cancellation; an upload session
        // already open is cancelled on the registry too.
        self.push(&progress, &cancel)
            .await
            .map_err(into_transfer_error)
    }

    fn set_remote_descriptor(&self, _descriptor: RemoteDescriptor) {
        // The manifest is pushed from its stored bytes, which already name
        // every layer's digest: nothing to learn here.
    }
}
