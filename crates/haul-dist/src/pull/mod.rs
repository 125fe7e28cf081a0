//! `pull`: from a reference in a registry to an image in the local store.
//!
//! For each image manifest the reference resolves to: the config and the
//! manifest go into the store; the layers go through the download manager
//! (shared by every pull of one [`Puller`], so a layer common to several
//! images moves once), each streamed once from the registry into the
//! content store and, unpacking, into its layer directory; then the image
//! is recorded and tagged. Progress reads as Docker's.

pub(crate) mod inflate_threads;
pub(crate) mod layer;
pub(crate) mod layer_fetch;
pub(crate) mod own_blobs;
pub(crate) mod referrers;
pub(crate) mod resolve;
pub(crate) mod schema1;
pub(crate) mod store_layers;
pub(crate) mod unpack_follow;
pub(crate) mod v1;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use haul_oci::{media_type, parse_image_config, Digest, ImageConfig, Platform, Reference};
use haul_registry::{RegistryClient, Repository};
use haul_store::{ImageRecord, RefTarget, Store, UnpackOptions};
use haul_xfer::{DownloadManager, Message, ProgressOutput, RetryPolicy};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::protocol::{speaks_v1, Protocol};
use crate::pull::layer::PullLayer;
use crate::pull::layer_fetch::LayerBlobInfo;
use crate::pull::own_blobs::fetch_missing_layer_blobs;
use crate::pull::resolve::{manifest_reference, resolve};
use crate::pull::store_layers::{SharedLayers, StoreLayers};
use crate::pull::v1::V1Puller;
use crate::task::blocking;

/// Largest config read into memory.
pub(crate) const CONFIG_LIMIT: u64 = 8 * 1024 * 1024;

/// How a [`Puller`] transfers layers.
#[derive(Debug, Clone)]
pub struct PullSettings {
    /// Layers downloading at once (0 = unlimited).
    pub max_concurrent_downloads: usize,
    /// Attempts per layer, the first included.
    pub max_download_attempts: u32,
    /// One tick of the retry countdown (1 s; tests use less).
    pub retry_tick: Duration,
    /// Unpack layers (`false`: keep the blobs only).
    pub unpack: bool,
    /// Layers unpacking at once (0 = unlimited; default: the cores). An
    /// unpack never holds a download slot.
    pub max_concurrent_unpacks: usize,
    /// How far one layer may expand when unpacked (decompression bombs).
    pub expansion: haul_store::ExpansionLimit,
    /// The registry protocol: v2, v1, or (the default) v1 only for a
    /// registry without the v2 API.
    pub protocol: Protocol,
    /// Threads inflating one big gzip layer (0 = the cores no other
    /// layer's unpack uses, the default; 1 = never in parallel).
    pub inflate_threads: usize,
}

impl Default for PullSettings {
    fn default() -> Self {
        Self {
            max_concurrent_downloads: 3,
            max_download_attempts: 5,
            retry_tick: Duration::from_secs(1),
            unpack: true,
            max_concurrent_unpacks: crate::available_cores(),
            expansion: haul_store::ExpansionLimit::default(),
            protocol: Protocol::default(),
            inflate_threads: 0,
        }
    }
}

/// What to pull of a reference.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// The platform to choose from an index (default: this machine's).
    pub platform: Option<Platform>,
    /// Take every platform of an index.
    pub all_platforms: bool,
    /// Referrers (signatures, SBOMs) of the pulled manifests to bring
    /// into the store too.
    pub referrers: crate::ReferrerOptions,
}

/// What a pull did.
#[derive(Debug, Clone)]
pub struct PullReport {
    /// The reference pulled, normalised (`docker.io/library/alpine:latest`).
    pub reference: Reference,
    /// Digest of what the reference named (index or manifest).
    pub digest: Digest,
    /// The images stored (one per platform pulled).
    pub images: Vec<ImageRecord>,
    /// Whether the reference already named this image locally.
    pub up_to_date: bool,
    /// Layer bytes that crossed the network.
    pub transferred: u64,
    /// The referrers stored with the image (every level).
    pub referrers: Vec<Digest>,
    /// The cosign digest tags stored with it.
    pub digest_tags: Vec<String>,
    /// What the caller should tell the user, e.g. that an image names no
    /// platform, so `--platform` could not be checked.
    pub warnings: Vec<String>,
}

/// Pulls images into a store. One `Puller` shares its transfers between
/// every pull it runs, also concurrent ones.
pub struct Puller {
    client: RegistryClient,
    store: Store,
    layers: SharedLayers,
    downloads: DownloadManager<StoreLayers>,
    max_download_attempts: u32,
    protocol: Protocol,
    /// Pulls from registries spoken to in v1.
    v1: V1Puller,
}

impl Puller {
    /// A puller writing into `store`.
    pub fn new(client: RegistryClient, store: Store, settings: &PullSettings) -> Self {
        let unpack = settings.unpack.then(|| UnpackOptions {
            expansion: settings.expansion,
            ..UnpackOptions::default()
        });
        let (layers, downloads) = layer_downloads(&store, unpack, settings);
        Self {
            v1: V1Puller::new(client.clone(), store.clone(), settings),
            client,
            store,
            layers,
            downloads,
            max_download_attempts: settings.max_download_attempts,
            protocol: settings.protocol,
        }
    }

    /// The store this puller writes into.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Pulls `reference`, writing progress to `output`. `cancel` stops this
    /// pull (layers another pull shares go on). A registry spoken to in v1
    /// (see [`PullSettings::protocol`]) is pulled from by tag, with every
    /// option but the protocol ignored: v1 knows no platforms.
    #[tracing::instrument(name = "pull", skip_all, fields(image = %reference))]
    pub async fn pull(
        &self,
        reference: &Reference,
        options: &PullOptions,
        output: Arc<dyn ProgressOutput>,
        cancel: CancellationToken,
    ) -> Result<PullReport> {
        if speaks_v1(
            &self.client,
            reference,
            self.protocol,
            !options.referrers.is_empty(),
            output.as_ref(),
        )
        .await?
        {
            return self.v1.pull(reference, output, cancel).await;
        }
        self.pull_v2(reference, options, output, cancel).await
    }

    async fn pull_v2(
        &self,
        reference: &Reference,
        options: &PullOptions,
        output: Arc<dyn ProgressOutput>,
        cancel: CancellationToken,
    ) -> Result<PullReport> {
        let repo = self.client.repository_for(reference)?;
        let shown = manifest_reference(reference);
        output.message(
            &shown,
            Message::PullingFrom {
                repository: reference.repository().to_string(),
            },
        );

        let previous = {
            let store = self.store.clone();
            let reference = reference.clone();
            blocking(move || Ok(store.resolve(&reference)?)).await?
        };
        // A reference pulled before is asked with HEAD first: what it
        // names is likely in the store already (see `resolve`). A first
        // pull sends its GET at once, without the extra round trip.
        let local = previous.is_some().then_some(&self.store);
        let resolved = tokio::select! {
            resolved = resolve(&repo, reference, options.platform.as_ref(), options.all_platforms, local) => resolved?,
            _ = cancel.cancelled() => return Err(Error::Cancelled),
        };
        let store = self.store.clone();
        // Holding a lease keeps gc from collecting blobs and layers that no
        // image names yet.
        let _lease = blocking(move || Ok(store.lease()?)).await?;

        let index_digest = resolved.index().map(|i| i.digest().clone());
        if let Some(index) = resolved.index() {
            self.put_blob(index.bytes().to_vec(), index.digest())
                .await?;
        }

        let transferred = Arc::new(AtomicU64::new(0));
        let mut images = Vec::new();
        let mut warnings = Vec::new();
        for (manifest, _platform) in &resolved.images {
            let record = match manifest.manifest() {
                haul_oci::Manifest::Schema1(schema1) => {
                    self.pull_schema1(&repo, reference, schema1, &output, &cancel, &transferred)
                        .await?
                }
                _ => {
                    let config = tokio::select! {
                        config = self.fetch_config(&repo, manifest) => config?,
                        _ = cancel.cancelled() => return Err(Error::Cancelled),
                    };
                    self.put_blob(manifest.bytes().to_vec(), manifest.digest())
                        .await?;
                    let record = ImageRecord::from_parts(manifest, &config)?;
                    warnings.extend(check_platform(reference, &resolved, &record, options)?);
                    let layers = record
                        .layers
                        .iter()
                        .map(|l| {
                            (
                                blob_info(&l.digest, l.size, &l.media_type),
                                Some(l.diff_id.clone()),
                            )
                        })
                        .collect();
                    let diff_ids = self
                        .download_layers(
                            repo.clone(),
                            reference,
                            layers,
                            &output,
                            &cancel,
                            &transferred,
                        )
                        .await?;
                    if diff_ids != config.diff_ids() {
                        return Err(Error::Inconsistent {
                            reference: reference.to_string(),
                            message:
                                "the layers' content does not match the diffIDs of the image config"
                                    .into(),
                        });
                    }
                    record
                }
            };
            // A layer found by its chain ID may have come from another blob:
            // the store keeps this manifest's own.
            let fetched = fetch_missing_layer_blobs(
                &repo,
                &self.store,
                &record,
                self.max_download_attempts,
                &output,
                &cancel,
            )
            .await?;
            transferred.fetch_add(fetched, Ordering::Relaxed);
            let store = self.store.clone();
            let to_put = record.clone();
            let source = format!("{}/{}", reference.registry(), reference.repository());
            blocking(move || record_image(&store, &to_put, &source)).await?;
            images.push(record);
        }

        // The reference names the image for this machine's platform (or the
        // one asked for), also when every platform was pulled.
        let tagged = self.image_to_tag(&images, options)?;
        // The reference keeps exactly what the registry's reference served:
        // the chosen platform's manifest, and the index it came through.
        let target = RefTarget {
            manifest: tagged.manifest_digest.clone(),
            index: index_digest,
        };
        let mut up_to_date = previous.is_some_and(|p| p.target() == target)
            && transferred.load(Ordering::Relaxed) == 0;
        {
            let store = self.store.clone();
            let reference = reference.clone();
            let by_digest = reference
                .without_tag()
                .with_digest(resolved.top.digest().clone());
            blocking(move || {
                store.tag(&reference, &target)?;
                store.tag(&by_digest, &target)?;
                Ok(())
            })
            .await?;
        }
        let options_referrers = &options.referrers;
        let pulled_referrers = if !options_referrers.is_empty() {
            // Signatures are often of the index a tag names, not of the
            // platform's manifest: both are subjects.
            let mut subjects: Vec<Digest> = resolved
                .index()
                .map(|i| i.digest().clone())
                .into_iter()
                .collect();
            subjects.extend(
                images
                    .iter()
                    .filter(|i| !i.manifest_made_locally)
                    .map(|i| i.manifest_digest.clone()),
            );
            let pulled = crate::pull::referrers::ReferrerPull {
                repo: &repo,
                store: &self.store,
                attempts: self.max_download_attempts,
                output: &output,
                cancel: &cancel,
            }
            .run(&subjects, options_referrers)
            .await?;
            up_to_date = up_to_date && pulled.transferred == 0;
            transferred.fetch_add(pulled.transferred, Ordering::Relaxed);
            pulled
        } else {
            Default::default()
        };
        output.message(
            "",
            Message::Digest {
                digest: resolved.top.digest().to_string(),
            },
        );
        output.message(
            "",
            Message::PullFinished {
                reference: reference.familiar(),
                up_to_date,
            },
        );
        Ok(PullReport {
            reference: reference.clone(),
            digest: resolved.top.digest().clone(),
            images,
            up_to_date,
            transferred: transferred.load(Ordering::Relaxed),
            warnings,
            referrers: pulled_referrers.digests,
            digest_tags: pulled_referrers.digest_tags,
        })
    }

    fn image_to_tag<'a>(
        &self,
        images: &'a [ImageRecord],
        options: &PullOptions,
    ) -> Result<&'a ImageRecord> {
        let wanted = options
            .platform
            .clone()
            .unwrap_or_else(Platform::host)
            .normalized();
        images
            .iter()
            .find(|i| i.platform.normalized().same_as(&wanted))
            .or(images.first())
            .ok_or_else(|| Error::Internal("a pull resolved to no image".into()))
    }

    async fn put_blob(&self, bytes: Vec<u8>, digest: &Digest) -> Result<()> {
        let store = self.store.clone();
        let digest = digest.clone();
        blocking(move || {
            if !store.has_blob(&digest) {
                store.put_blob_bytes(&bytes, &digest)?;
            }
            Ok(())
        })
        .await
    }

    /// The image config, from the store if present, else from the registry.
    async fn fetch_config(
        &self,
        repo: &Repository,
        manifest: &haul_oci::ParsedManifest,
    ) -> Result<ImageConfig> {
        let descriptor = manifest
            .manifest()
            .config()
            .ok_or_else(|| Error::Unsupported {
                reference: manifest.digest().to_string(),
                message: "the manifest has no config".into(),
            })?;
        let digest = Digest::try_from(descriptor.digest())?;
        if descriptor.size() > CONFIG_LIMIT {
            return Err(Error::Unsupported {
                reference: manifest.digest().to_string(),
                message: format!("its config is larger than {CONFIG_LIMIT} bytes"),
            });
        }
        let bytes = {
            let store = self.store.clone();
            let digest = digest.clone();
            blocking(move || {
                Ok(if store.has_blob(&digest) {
                    Some(store.read_blob_limited(&digest, CONFIG_LIMIT)?)
                } else {
                    None
                })
            })
            .await?
        };
        let bytes = match bytes {
            Some(b) => b,
            None => {
                use futures::TryStreamExt;
                let chunks: Vec<bytes::Bytes> = repo
                    .blob_stream(&digest, Some(descriptor.size()))
                    .try_collect()
                    .await?;
                let bytes = chunks.concat();
                self.put_blob(bytes.clone(), &digest).await?;
                bytes
            }
        };
        Ok(parse_image_config(bytes)?)
    }

    /// Downloads (and, unpacking, registers) layers through the shared
    /// download manager; returns their diffIDs, bottom first.
    async fn download_layers(
        &self,
        repo: Repository,
        reference: &Reference,
        layers: Vec<(LayerBlobInfo, Option<Digest>)>,
        output: &Arc<dyn ProgressOutput>,
        cancel: &CancellationToken,
        transferred: &Arc<AtomicU64>,
    ) -> Result<Vec<Digest>> {
        let descriptors: Vec<Arc<PullLayer>> = layers
            .into_iter()
            .map(|(blob, diff_id)| {
                Arc::new(PullLayer {
                    repo: repo.clone(),
                    store: self.store.clone(),
                    layers: Arc::clone(&self.layers),
                    blob,
                    diff_id,
                    transferred: Arc::clone(transferred),
                    corrupt_downloads: Default::default(),
                    attempts: Default::default(),
                    max_attempts: self.max_download_attempts,
                })
            })
            .collect();
        let (diff_ids, release) = self
            .downloads
            .download(cancel, &descriptors, Arc::clone(output))
            .await?;
        release.release().await;
        diff_ids
            .iter()
            .map(|d| Digest::parse(d.as_str()))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Inconsistent {
                reference: reference.to_string(),
                message: format!("a layer store returned a bad diffID: {e}"),
            })
    }

    /// A schema 1 image: its layers first (their diffIDs are learnt by
    /// unpacking them), then the config and a schema 2 manifest made from
    /// its history, as Docker does.
    async fn pull_schema1(
        &self,
        repo: &Repository,
        reference: &Reference,
        manifest: &haul_oci::Schema1Manifest,
        output: &Arc<dyn ProgressOutput>,
        cancel: &CancellationToken,
        transferred: &Arc<AtomicU64>,
    ) -> Result<ImageRecord> {
        let plan = crate::pull::schema1::plan(manifest, &reference.to_string())?;
        let mut layers = Vec::with_capacity(plan.layers.len());
        for digest in &plan.layers {
            let size = repo.head_blob(digest).await?.ok_or_else(|| {
                haul_registry::Error::BlobNotFound {
                    repository: format!("{}/{}", repo.registry(), repo.name()),
                    digest: digest.to_string(),
                    message: None,
                }
            })?;
            // A blob pulled before is known by its diffID: the layer can
            // then be found "Already exists" without downloading it.
            let known = {
                let store = self.store.clone();
                let digest = digest.clone();
                blocking(move || Ok(store.diff_id_for_blob(&digest).ok().flatten())).await?
            };
            layers.push((
                blob_info(digest, size, media_type::DOCKER_LAYER_GZIP),
                known,
            ));
        }
        let sizes: Vec<(Digest, u64)> = layers
            .iter()
            .map(|(b, _)| (b.digest.clone(), b.size))
            .collect();
        let diff_ids = self
            .download_layers(repo.clone(), reference, layers, output, cancel, transferred)
            .await?;
        let config_bytes = plan.config(&diff_ids)?;
        let config_digest = Digest::sha256_of(&config_bytes);
        let manifest_bytes =
            crate::pull::schema1::schema2_manifest((&config_digest, config_bytes.len()), &sizes);
        let config = parse_image_config(config_bytes.clone())?;
        let parsed =
            haul_oci::parse_manifest(manifest_bytes.clone(), Some(media_type::DOCKER_MANIFEST))?;
        self.put_blob(config_bytes, &config_digest).await?;
        self.put_blob(manifest_bytes, parsed.digest()).await?;
        let mut record = ImageRecord::from_parts(&parsed, &config)?;
        record.manifest_made_locally = true;
        Ok(record)
    }
}

/// The layers of `store` as the download manager sees them, and a download
/// manager over them with the settings' limit and retry policy.
pub(crate) fn layer_downloads(
    store: &Store,
    unpack: Option<UnpackOptions>,
    settings: &PullSettings,
) -> (SharedLayers, DownloadManager<StoreLayers>) {
    let layers = Arc::new(
        StoreLayers::new(store.clone(), unpack, settings.max_concurrent_unpacks)
            .with_inflate_threads(settings.inflate_threads),
    );
    let retry = RetryPolicy::default()
        .with_max_attempts(settings.max_download_attempts)
        .with_tick(settings.retry_tick);
    let downloads = DownloadManager::new(Arc::clone(&layers))
        .with_concurrency(settings.max_concurrent_downloads)
        .with_retry_policy(retry);
    (layers, downloads)
}

/// What a layer fetch needs to know of a layer blob.
fn blob_info(digest: &Digest, size: u64, media_type: &str) -> LayerBlobInfo {
    LayerBlobInfo {
        digest: digest.clone(),
        size,
        compression: media_type::layer_compression(media_type),
    }
}

/// Refuses a reference to one image (no index to choose from) whose
/// platform is not the one `--platform` asked for, as Docker 20.10 does;
/// for an image whose config names no platform, returns a warning and takes
/// it as it is.
fn check_platform(
    reference: &Reference,
    resolved: &crate::pull::resolve::Resolved,
    record: &ImageRecord,
    options: &PullOptions,
) -> Result<Option<String>> {
    let Some(wanted) = &options.platform else {
        return Ok(None);
    };
    let actual = &record.platform;
    if resolved.index().is_some() {
        return Ok(None);
    }
    if actual.os.is_empty() || actual.architecture.is_empty() {
        return Ok(Some(format!(
            "{} names no platform; pulled it for {wanted} as it is",
            reference.familiar()
        )));
    }
    if wanted.compatible().iter().any(|p| p.same_as(actual)) {
        return Ok(None);
    }
    Err(Error::PlatformMismatch {
        reference: reference.familiar(),
        wanted: wanted.to_string(),
        actual: actual.to_string(),
    })
}

/// Stores an image record, and remembers that `source`
/// (`registry/repository`) has each of its layer blobs, so that a later
/// push to that registry mounts them.
pub(crate) fn record_image(store: &Store, record: &ImageRecord, source: &str) -> Result<()> {
    store.put_image(record)?;
    let layers: Vec<_> = record
        .layers
        .iter()
        .map(|l| (l.diff_id.clone(), l.digest.clone()))
        .collect();
    store.add_distribution_sources(&layers, source)?;
    Ok(())
}
