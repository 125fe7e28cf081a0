//! The local store seen by the download manager: layers by chain ID, and
//! registration of layers the pull already unpacked while downloading.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use haul_oci::Digest;
use haul_store::{StagedLayer, Store, UnpackOptions};
use haul_xfer::{ChainId, DiffId, LayerStream};

use crate::layer_fetch::blocking;

/// A layer of the store, as the download manager handles it.
#[derive(Debug, Clone)]
pub struct StoreLayer {
    diff_id: DiffId,
    chain_id: ChainId,
}

impl haul_xfer::Layer for StoreLayer {
    fn diff_id(&self) -> DiffId {
        self.diff_id.clone()
    }

    fn chain_id(&self) -> ChainId {
        self.chain_id.clone()
    }
}

/// The [`haul_xfer::LayerStore`] of a pull.
///
/// Descriptors unpack their layer while it downloads (`StoreLayers::stage`);
/// `register` then only puts that staged layer on its parent. A layer that
/// arrives without a staged copy (the same layer twice in one image) is
/// unpacked from its stream. With `unpack` off nothing is unpacked and
/// registration only computes the chain ID.
pub struct StoreLayers {
    store: Store,
    unpack: Option<UnpackOptions>,
    staged: Mutex<HashMap<DiffId, Vec<StagedLayer>>>,
    blobs: Mutex<HashMap<DiffId, Digest>>,
}

impl StoreLayers {
    /// Layers of `store`; `unpack` is `None` for a blobs-only pull.
    pub fn new(store: Store, unpack: Option<UnpackOptions>) -> Self {
        Self {
            store,
            unpack,
            staged: Mutex::new(HashMap::new()),
            blobs: Mutex::new(HashMap::new()),
        }
    }

    /// How layers are unpacked, if they are.
    pub fn unpack_options(&self) -> Option<&UnpackOptions> {
        self.unpack.as_ref()
    }

    /// Keeps a layer unpacked ahead of registration, and which blob it
    /// came from (to read it again if the image uses it twice).
    pub(crate) fn stage(&self, staged: StagedLayer, blob: &Digest) {
        let diff_id = DiffId::new(staged.diff_id().to_string());
        lock(&self.blobs).insert(diff_id.clone(), blob.clone());
        lock(&self.staged).entry(diff_id).or_default().push(staged);
    }

    /// Remembers the blob of a layer that was not staged (blobs-only pull).
    pub(crate) fn note_blob(&self, diff_id: &Digest, blob: &Digest) {
        lock(&self.blobs).insert(DiffId::new(diff_id.to_string()), blob.clone());
    }

    fn take_staged(&self, diff_id: &DiffId) -> Option<StagedLayer> {
        let mut staged = lock(&self.staged);
        let list = staged.get_mut(diff_id)?;
        let layer = list.pop();
        if list.is_empty() {
            staged.remove(diff_id);
        }
        layer
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn parse(id: &str) -> Result<Digest, haul_xfer::Error> {
    Digest::parse(id).map_err(haul_xfer::Error::do_not_retry)
}

impl haul_xfer::LayerStore for StoreLayers {
    type Layer = StoreLayer;

    fn chain_id(&self, parent: Option<&ChainId>, diff_id: &DiffId) -> ChainId {
        let chain = match (
            parent.map(|p| Digest::parse(p.as_str())),
            Digest::parse(diff_id.as_str()),
        ) {
            (Some(Ok(parent)), Ok(diff)) => haul_store::chain_id(Some(&parent), &diff).to_string(),
            (None, Ok(diff)) => diff.to_string(),
            // Not digests: no such layer can be stored; any distinct text does.
            _ => format!("{} {}", parent.map_or("", |p| p.as_str()), diff_id),
        };
        ChainId::new(chain)
    }

    async fn get(&self, chain_id: &ChainId) -> Option<StoreLayer> {
        let chain = Digest::parse(chain_id.as_str()).ok()?;
        let store = self.store.clone();
        let info = blocking(move || Ok(store.get_layer(&chain)?))
            .await
            .ok()??;
        Some(StoreLayer {
            diff_id: DiffId::new(info.diff_id.to_string()),
            chain_id: chain_id.clone(),
        })
    }

    async fn register(
        &self,
        stream: LayerStream,
        diff_id: Option<&DiffId>,
        parent: Option<&ChainId>,
    ) -> Result<StoreLayer, haul_xfer::Error> {
        let parent_digest = parent.map(|p| parse(p.as_str())).transpose()?;
        let Some(options) = self.unpack.clone() else {
            let diff_id = diff_id.cloned().ok_or_else(|| {
                haul_xfer::Error::do_not_retry("a blobs-only pull needs every layer's diffID")
            })?;
            let chain_id = haul_xfer::LayerStore::chain_id(self, parent, &diff_id);
            return Ok(StoreLayer { diff_id, chain_id });
        };
        let store = self.store.clone();
        let info =
            match diff_id.and_then(|d| self.take_staged(d)) {
                Some(staged) => {
                    blocking(move || Ok(store.commit_staged(staged, parent_digest.as_ref())?)).await
                }
                None => {
                    let reader = tokio_util::io::SyncIoBridge::new(stream);
                    blocking(move || {
                        let reader = haul_store::decompressing_reader(
                            reader,
                            haul_oci::Compression::Uncompressed,
                        )
                        .map_err(|e| crate::Error::Decompress(e.to_string()))?;
                        Ok(store.register_layer_with(
                            reader,
                            parent_digest.as_ref(),
                            None,
                            &options,
                        )?)
                    })
                    .await
                }
            }
            .map_err(haul_xfer::Error::do_not_retry)?;
        Ok(StoreLayer {
            diff_id: DiffId::new(info.diff_id.to_string()),
            chain_id: ChainId::new(info.chain_id.to_string()),
        })
    }

    async fn diff_stream(&self, layer: &StoreLayer) -> Result<LayerStream, haul_xfer::Error> {
        // The compressed blob: registration detects the compression itself.
        let blob = lock(&self.blobs)
            .get(&layer.diff_id)
            .cloned()
            .ok_or_else(|| {
                haul_xfer::Error::do_not_retry(format!(
                    "no blob is known for layer {}",
                    layer.diff_id
                ))
            })?;
        let path = self.store.blob_path(&blob);
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| haul_xfer::Error::do_not_retry(format!("{}: {e}", path.display())))?;
        Ok(Box::pin(file))
    }

    async fn release(&self, _layer: StoreLayer) {
        // Layers are kept alive by image records and leases, not counts.
    }
}

/// Shared form used by the pull.
pub(crate) type SharedLayers = Arc<StoreLayers>;
