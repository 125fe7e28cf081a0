//! The local store seen by the download manager: layers by chain ID, and
//! registration of what a layer's download produced ([`PulledLayer`]).

use std::sync::Arc;

use haul_oci::{Compression, Digest};
use haul_store::{StagedLayer, Store, UnpackOptions};
use haul_xfer::{ChainId, Counts, DiffId, ProgressOutput, Registration, Status};

use crate::pull::inflate_threads::InflateBudget;
use crate::pull::unpack_follow::{unpack_slots, UnpackSlots, Unpacking};
use crate::task::blocking;

/// A layer of the store, as the download manager handles it.
#[derive(Debug, Clone)]
pub struct StoreLayer {
    diff_id: DiffId,
    chain_id: ChainId,
    /// The blob it was registered from in this pull (`None` for a layer
    /// found already present): what a second use in one image reads again.
    blob: Option<Digest>,
}

impl haul_xfer::Layer for StoreLayer {
    fn diff_id(&self) -> DiffId {
        self.diff_id.clone()
    }

    fn chain_id(&self) -> ChainId {
        self.chain_id.clone()
    }
}

/// What one layer's download hands to its own registration, through the
/// download manager (never through a table another pull could read).
#[derive(Debug)]
pub enum PulledLayer {
    /// The layer is being unpacked from its blob (complete in the store),
    /// under the unpack limit, then synced outside it; registration waits
    /// for it ("Extracting").
    Unpacking {
        /// The unpack under way.
        unpacking: Unpacking,
        /// The blob it comes from (in the store).
        blob: Digest,
    },
    /// The layer was unpacked while its blob downloaded and waits, staged,
    /// for its parent; dropping it removes the staging directory.
    Staged {
        /// The unpacked layer.
        staged: StagedLayer,
        /// The blob it came from (in the store).
        blob: Digest,
    },
    /// A blobs-only pull: the blob is in the store and its diffID known.
    Blob {
        /// The blob (in the store).
        blob: Digest,
        /// The digest of its uncompressed content.
        diff_id: Digest,
    },
}

impl PulledLayer {
    fn blob(&self) -> &Digest {
        match self {
            PulledLayer::Staged { blob, .. }
            | PulledLayer::Blob { blob, .. }
            | PulledLayer::Unpacking { blob, .. } => blob,
        }
    }
}

/// The [`haul_xfer::LayerStore`] of a pull.
///
/// Descriptors unpack their layer while it downloads and hand it over as
/// [`PulledLayer::Staged`]; `register` then only puts that staged layer on
/// its parent. A layer used twice in one image is unpacked again from its
/// blob. With `unpack` off nothing is unpacked and registration only
/// computes the chain ID.
pub struct StoreLayers {
    store: Store,
    unpack: Option<UnpackOptions>,
    slots: UnpackSlots,
    inflate: Arc<InflateBudget>,
}

impl StoreLayers {
    /// Layers of `store`; `unpack` is `None` for a blobs-only pull. At most
    /// `max_unpacks` layers unpack at once (0 = unlimited).
    pub fn new(store: Store, unpack: Option<UnpackOptions>, max_unpacks: usize) -> Self {
        Self {
            store,
            unpack,
            slots: unpack_slots(max_unpacks),
            inflate: InflateBudget::new(0),
        }
    }

    /// Inflates a big gzip layer with `threads` threads (0 = the free
    /// cores, the default; 1 = sequentially).
    pub fn with_inflate_threads(mut self, threads: usize) -> Self {
        self.inflate = InflateBudget::new(threads);
        self
    }

    /// The inflate threads every pull of these layers shares.
    pub(crate) fn inflate_budget(&self) -> &Arc<InflateBudget> {
        &self.inflate
    }

    /// The unpack limit every pull of these layers shares.
    pub(crate) fn unpack_slots(&self) -> &UnpackSlots {
        &self.slots
    }

    /// How layers are unpacked, if they are.
    pub fn unpack_options(&self) -> Option<&UnpackOptions> {
        self.unpack.as_ref()
    }
}

fn parse(id: &str) -> Result<Digest, haul_xfer::Error> {
    Digest::parse(id).map_err(haul_xfer::Error::do_not_retry)
}

fn layer_of(info: haul_store::LayerInfo, blob: Digest) -> StoreLayer {
    StoreLayer {
        diff_id: DiffId::new(info.diff_id.to_string()),
        chain_id: ChainId::new(info.chain_id.to_string()),
        blob: Some(blob),
    }
}

impl haul_xfer::LayerStore for StoreLayers {
    type Layer = StoreLayer;
    type Blob = PulledLayer;

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
            blob: None,
        })
    }

    async fn register(
        &self,
        pulled: PulledLayer,
        parent: Option<&ChainId>,
        registration: &Registration,
    ) -> Result<StoreLayer, haul_xfer::Error> {
        let parent_digest = parent.map(|p| parse(p.as_str())).transpose()?;
        let blob = pulled.blob().clone();
        match pulled {
            PulledLayer::Blob { diff_id, .. } => {
                let diff_id = DiffId::new(diff_id.to_string());
                let chain_id = haul_xfer::LayerStore::chain_id(self, parent, &diff_id);
                Ok(StoreLayer {
                    diff_id,
                    chain_id,
                    blob: Some(blob),
                })
            }
            PulledLayer::Unpacking { mut unpacking, .. } => {
                let staged = extracting(&mut unpacking, registration).await?;
                let store = self.store.clone();
                let info =
                    blocking(move || Ok(store.commit_staged(staged, parent_digest.as_ref())?))
                        .await
                        .map_err(haul_xfer::Error::do_not_retry)?;
                Ok(layer_of(info, blob))
            }
            PulledLayer::Staged { staged, .. } => {
                let store = self.store.clone();
                let info =
                    blocking(move || Ok(store.commit_staged(staged, parent_digest.as_ref())?))
                        .await
                        .map_err(haul_xfer::Error::do_not_retry)?;
                Ok(layer_of(info, blob))
            }
        }
    }

    async fn register_again(
        &self,
        layer: &StoreLayer,
        parent: Option<&ChainId>,
        registration: &Registration,
    ) -> Result<StoreLayer, haul_xfer::Error> {
        let blob = layer.blob.clone().ok_or_else(|| {
            haul_xfer::Error::do_not_retry(format!(
                "layer {} was not registered from a blob in this pull",
                layer.diff_id
            ))
        })?;
        let Some(options) = self.unpack.clone() else {
            let chain_id = haul_xfer::LayerStore::chain_id(self, parent, &layer.diff_id);
            return Ok(StoreLayer {
                diff_id: layer.diff_id.clone(),
                chain_id,
                blob: Some(blob),
            });
        };
        let parent_digest = parent.map(|p| parse(p.as_str())).transpose()?;
        let expected = parse(layer.diff_id.as_str())?;
        let store = self.store.clone();
        let cancel = registration.cancellation_token().clone();
        let source = blob.clone();
        let info = blocking(move || {
            let file = store.open_blob(&source)?;
            let reader = haul_store::decompressing_reader(
                CancellableRead {
                    inner: std::io::BufReader::with_capacity(256 * 1024, file),
                    cancel,
                },
                Compression::Uncompressed,
            )
            .map_err(|e| crate::Error::Decompress(e.to_string()))?;
            Ok(store.register_layer_with(
                reader,
                parent_digest.as_ref(),
                Some(&expected),
                &options,
            )?)
        })
        .await
        .map_err(haul_xfer::Error::do_not_retry)?;
        Ok(layer_of(info, blob))
    }

    async fn release(&self, _layer: StoreLayer) {
        // Layers are kept alive by image records and leases, not counts.
    }
}

/// Waits for an unpack, reporting "Extracting" with the bytes of the blob
/// it has read, until it ends or the registration is cancelled.
async fn extracting(
    unpacking: &mut Unpacking,
    registration: &Registration,
) -> Result<StagedLayer, haul_xfer::Error> {
    let report = |unpacking: &Unpacking| {
        let (current, total) = unpacking.progress();
        registration.progress().status(
            registration.id(),
            Status::Extracting(Counts::of(current, total)),
        );
    };
    let mut ticks = tokio::time::interval(std::time::Duration::from_millis(100));
    loop {
        tokio::select! {
            biased;
            _ = registration.cancellation_token().cancelled() => {
                return Err(haul_xfer::Error::RegistrationCancelled);
            }
            staged = unpacking.finished() => {
                report(unpacking);
                return staged.map_err(haul_xfer::Error::do_not_retry);
            }
            _ = ticks.tick() => report(unpacking),
        }
    }
}

/// A blocking reader that fails once `cancel` fires.
struct CancellableRead<R> {
    inner: R,
    cancel: tokio_util::sync::CancellationToken,
}

impl<R: std::io::Read> std::io::Read for CancellableRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.cancel.is_cancelled() {
            return Err(std::io::Error::other("layer registration cancelled"));
        }
        self.inner.read(buf)
    }
}

/// Shared form used by the pull.
pub(crate) type SharedLayers = std::sync::Arc<StoreLayers>;
