//! The blobs of a pulled image that its layers did not bring: a layer found
//! "Already exists" by its chain ID may have been unpacked from another
//! blob (the same diff gzip- and zstd-compressed, or compressed at another
//! level). The store's content must hold every blob of every image it
//! names, so those are fetched, blob only: the layer is not unpacked again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use haul_registry::Repository;
use haul_store::{ImageRecord, Store};
use haul_xfer::{short_id, Counts, ProgressOutput, Status};
use tokio_util::sync::CancellationToken;

use crate::error::is_retryable;
use crate::error::Result;
use crate::pull::layer_fetch::{fetch_layer, LayerBlobInfo};
use crate::task::blocking;

/// Layer blobs fetched at once.
const CONCURRENT_FETCHES: usize = 3;

/// Fetches every layer blob of `image` missing from `store`, each tried at
/// most `attempts` times (a partial download resumes); returns the bytes
/// that crossed the network.
pub(crate) async fn fetch_missing_layer_blobs(
    repo: &Repository,
    store: &Store,
    image: &ImageRecord,
    attempts: u32,
    output: &Arc<dyn ProgressOutput>,
    cancel: &CancellationToken,
) -> Result<u64> {
    let missing = {
        let store = store.clone();
        let image = image.clone();
        blocking(move || {
            Ok(image
                .layers
                .iter()
                .filter(|layer| !store.has_blob(&layer.digest))
                .cloned()
                .collect::<Vec<_>>())
        })
        .await?
    };
    let transferred = AtomicU64::new(0);
    let fetches = missing.into_iter().map(|layer| {
        let blob = LayerBlobInfo {
            digest: layer.digest.clone(),
            size: layer.size,
            compression: haul_oci::media_type::layer_compression(&layer.media_type),
        };
        let id = short_id(layer.digest.as_str()).to_string();
        let transferred = &transferred;
        async move {
            let report = |present: u64| {
                output.status(&id, Status::Downloading(Counts::of(present, blob.size)));
            };
            let mut attempt = 1;
            loop {
                match fetch_layer(
                    repo,
                    store,
                    &blob,
                    Some(&layer.diff_id),
                    None,
                    cancel,
                    &report,
                )
                .await
                {
                    Ok(fetched) => {
                        transferred.fetch_add(fetched.transferred, Ordering::Relaxed);
                        output.status(&id, Status::DownloadComplete);
                        return Ok(());
                    }
                    Err(err) if attempt < attempts.max(1) && is_retryable(&err) => attempt += 1,
                    Err(err) => return Err(err),
                }
            }
        }
    });
    let results: Vec<Result<()>> = futures::stream::iter(fetches)
        .buffer_unordered(CONCURRENT_FETCHES)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>>>()?;
    Ok(transferred.load(Ordering::Relaxed))
}
