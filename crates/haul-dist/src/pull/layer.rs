//! A layer of an image being pulled, as the download manager sees it.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use haul_oci::Digest;
use haul_registry::Repository;
use haul_store::Store;
use haul_xfer::{short_id, Counts, DiffId, DownloadDescriptor, ProgressOutput, Status};
use tokio_util::sync::CancellationToken;

use crate::error::{into_transfer_error, is_retryable, Error};
use crate::pull::layer_fetch::{diff_id_of_stored_blob, fetch_layer, LayerBlobInfo, UnpackPlan};
use crate::pull::store_layers::{PulledLayer, SharedLayers};

/// Least bytes between two "Downloading" records (besides the last).
const PROGRESS_STEP: u64 = 512 * 1024;

/// One layer blob of a pull.
pub(crate) struct PullLayer {
    pub repo: Repository,
    pub store: Store,
    pub layers: SharedLayers,
    pub blob: LayerBlobInfo,
    /// The layer's diffID if known: from the image config, or (schema 1)
    /// from an earlier pull of the same blob.
    pub diff_id: Option<Digest>,
    /// Bytes that crossed the network for this layer.
    pub transferred: Arc<AtomicU64>,
    /// Complete downloads that did not match the digest so far.
    pub corrupt_downloads: AtomicU64,
    /// Attempts made so far.
    pub attempts: AtomicU32,
    /// Attempts allowed (for error messages; the manager enforces it).
    pub max_attempts: u32,
}

/// Complete downloads of a layer that may fail their digest check before
/// the layer fails: the second try is for a proxy that corrupted the first;
/// a registry that serves the same wrong bytes again will not do better.
const CORRUPT_DOWNLOADS_ALLOWED: u64 = 2;

impl PullLayer {
    fn short(&self) -> String {
        short_id(self.blob.digest.as_str()).to_string()
    }
}

impl DownloadDescriptor for PullLayer {
    type Blob = PulledLayer;

    fn key(&self) -> String {
        format!("v2:{}", self.blob.digest)
    }

    fn id(&self) -> String {
        self.short()
    }

    fn diff_id(&self) -> Option<DiffId> {
        self.diff_id.as_ref().map(|d| DiffId::new(d.to_string()))
    }

    async fn download(
        &self,
        cancel: CancellationToken,
        progress: Arc<dyn ProgressOutput>,
    ) -> Result<PulledLayer, haul_xfer::Error> {
        let id = self.short();
        let total = self.blob.size;
        let last = AtomicU64::new(0);
        let report = |present: u64| {
            let before = last.load(Ordering::Relaxed);
            let step = PROGRESS_STEP.min((total / 100).max(1));
            if present == total || present >= before + step || (before == 0 && present > 0) {
                last.store(present, Ordering::Relaxed);
                progress.status(&id, Status::Downloading(Counts::of(present, total)));
            }
        };
        let unpack = self
            .layers
            .unpack_options()
            .cloned()
            .map(|options| UnpackPlan {
                options,
                slots: Arc::clone(self.layers.unpack_slots()),
                inflate: Arc::clone(self.layers.inflate_budget()),
            });
        let fetched = fetch_layer(
            &self.repo,
            &self.store,
            &self.blob,
            self.diff_id.as_ref(),
            unpack,
            &cancel,
            &report,
        )
        .await
        .map_err(|err| {
            let attempt = self.attempts.fetch_add(1, Ordering::Relaxed) + 1;
            let give_up = is_corrupt_download(&err)
                && self.corrupt_downloads.fetch_add(1, Ordering::Relaxed) + 1
                    >= CORRUPT_DOWNLOADS_ALLOWED;
            let retry = !give_up && is_retryable(&err);
            let err = match err {
                Error::Cancelled => Error::Cancelled,
                err => Error::Layer {
                    digest: self.blob.digest.clone(),
                    attempt,
                    attempts: self.max_attempts.max(1),
                    source: Box::new(err),
                },
            };
            if retry {
                haul_xfer::Error::failed(err)
            } else {
                haul_xfer::Error::do_not_retry(err)
            }
        })?;
        self.transferred
            .fetch_add(fetched.transferred, Ordering::Relaxed);
        progress.status(&id, Status::VerifyingChecksum);
        progress.status(&id, Status::DownloadComplete);
        let blob = self.blob.digest.clone();
        match (fetched.unpacking, &self.diff_id) {
            (Some(unpacking), _) => Ok(PulledLayer::Unpacking { unpacking, blob }),
            (None, Some(diff_id)) => Ok(PulledLayer::Blob {
                blob,
                diff_id: diff_id.clone(),
            }),
            // A blobs-only pull of a layer whose diffID nothing told (a
            // schema 1 image seen for the first time): hash its content.
            (None, None) => {
                let diff_id = diff_id_of_stored_blob(&self.store, &self.blob)
                    .await
                    .map_err(into_transfer_error)?;
                Ok(PulledLayer::Blob { blob, diff_id })
            }
        }
    }
}

/// Whether a whole download failed its size or digest check.
fn is_corrupt_download(err: &Error) -> bool {
    matches!(
        err,
        Error::Store(
            haul_store::Error::DigestMismatch { .. } | haul_store::Error::SizeMismatch { .. }
        ) | Error::Registry(haul_registry::Error::DigestMismatch { .. })
    )
}
