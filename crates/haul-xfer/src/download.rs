//! The download manager: pulls an image's layers in parallel and registers
//! them in order, each on top of its parent.
//!
//! # What [`DownloadManager::download`] does
//!
//! Given the image's layer descriptors, bottom-most first:
//!
//! 1. **Already exists.** While every layer so far is present, it asks the
//!    store for the next layer by chain ID (computed from the known diffIDs,
//!    [`DownloadDescriptor::diff_id`]). A present layer reports
//!    "Already exists" and is not downloaded. The first missing layer ends
//!    the probing: nothing above a missing layer can be present.
//! 2. **Pulling.** Every other layer reports "Pulling fs layer" and becomes
//!    a transfer keyed by the concatenated keys of layers 1..=N (so a layer
//!    is shared between pulls only on an identical parent chain). The
//!    transfer waits for a slot ("Waiting"), downloads with retries
//!    ("Downloading", from the descriptor; "Retrying in N seconds"), gives
//!    its slot back — the limit bounds network work only — waits for its
//!    parent's transfer, hands what the download produced (the
//!    descriptor's typed [`DownloadDescriptor::Blob`], e.g. a layer already
//!    unpacked while it downloaded) to [`LayerStore::register`] on top of
//!    the parent ("Extracting"), and reports "Pull complete". Nothing is
//!    handed over through side tables: each registration gets exactly the
//!    value its own download returned.
//! 3. **The same layer twice in one image** (same key further up) is not
//!    downloaded again and reports nothing of its own (its line is the
//!    earlier one's): the store registers the earlier layer's content again
//!    on top of this layer's parent ([`LayerStore::register_again`]).
//! 4. **Holding.** Every transfer this call joined or started stays watched
//!    until the call returns, so a parent cannot be cancelled under a child.
//!    On success the top-most transfer stays watched inside the returned
//!    [`ReleaseHandle`], which keeps the downloaded chain referenced until
//!    the caller (having created its image) releases it.
//!
//! It returns the image's diffIDs, bottom-most first, read from the top
//! layer's own chain (each transfer's result carries the diffIDs of the
//! chain it was registered on, as Docker walks a layer's parents), so a
//! pull that joined another pull's transfer for layer N does not depend on
//! its own transfers below N. Or it returns the first error on
//! the chain: a child whose parent failed reports the parent's error value
//! itself, so e.g. `simulating download attempt failure 5/5` reaches the
//! caller word for word. If the caller's token fires first, it returns
//! [`Error::Cancelled`] at once; transfers no other pull is watching are
//! then cancelled, shared ones go on.
//!
//! By the time `download` returns, every record of every layer has been
//! written to the output ("Pull complete" included), and none will follow.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::StreamExt;
use tokio::io::AsyncRead;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::cancel_reader::CancelAwareReader;
use crate::error::{Error, Operation};
use crate::ids::{ChainId, DiffId};
use crate::manager::{TransferContext, TransferManager};
use crate::progress::{ProgressOutput, Status};
use crate::progress_reader::ProgressReader;
use crate::retry::RetryPolicy;
use crate::transfer::{Transfer, Watcher};

/// A layer's bytes as a stream: the [`LayerStore::Blob`] of stores that
/// unpack a layer when it is registered (rather than while downloading).
pub type LayerStream = Pin<Box<dyn AsyncRead + Send>>;

/// A layer blob as a byte stream with its length, for stores whose
/// [`LayerStore::Blob`] is a stream to read at registration.
pub struct LayerBlob {
    /// The layer blob, exactly as stored in the registry (typically
    /// compressed).
    pub stream: LayerStream,
    /// Its length in bytes, 0 if unknown; used for "Extracting" progress.
    pub size: u64,
}

impl LayerBlob {
    /// The stream, reporting "Extracting" progress to every watcher of the
    /// registration and failing with an I/O error once it is cancelled.
    pub fn into_extracting(self, registration: &Registration) -> LayerStream {
        Box::pin(ProgressReader::new(
            CancelAwareReader::new(self.stream, registration.cancellation_token()),
            Arc::clone(registration.progress()),
            registration.id(),
            Status::Extracting,
            self.size,
        ))
    }
}

impl std::fmt::Debug for LayerBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerBlob")
            .field("size", &self.size)
            .finish()
    }
}

/// What a layer store's registration gets besides the layer: whom to
/// report to and when to stop.
#[derive(Clone)]
pub struct Registration {
    id: String,
    progress: Arc<dyn ProgressOutput>,
    cancel: CancellationToken,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("id", &self.id)
            .field("cancelled", &self.cancel.is_cancelled())
            .finish()
    }
}

impl Registration {
    /// The id the layer's progress records carry.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The output every watcher of the layer reads: report "Extracting"
    /// here.
    pub fn progress(&self) -> &Arc<dyn ProgressOutput> {
        &self.progress
    }

    /// Fires when every pull watching the layer has gone; the store should
    /// then stop and leave nothing behind.
    pub fn cancellation_token(&self) -> &CancellationToken {
        &self.cancel
    }
}

/// One layer of an image to pull, as the pull flow describes it.
///
/// Execution model: the manager calls `key`, `id` and `diff_id` on the task
/// running [`DownloadManager::download`]; `download`, `registered` and
/// `close` are called from the layer's transfer task. A descriptor whose
/// key is already being transferred (by this pull or another) is never
/// asked to download: the transfer in flight is joined.
pub trait DownloadDescriptor: Send + Sync + 'static {
    /// What a successful download produces and registration consumes:
    /// the [`LayerStore::Blob`] of the store the layer goes into (a layer
    /// unpacked while downloading, a file, a stream...). It travels through
    /// the manager as it is, from this descriptor's `download` to the
    /// registration of this descriptor's layer, and to nothing else.
    type Blob: Send + 'static;

    /// The deduplication key of the blob, e.g. `"v2:" + blob digest`.
    fn key(&self) -> String;

    /// The id progress records carry, e.g. the short blob digest.
    fn id(&self) -> String;

    /// The layer's diffID if already known (from metadata of an earlier
    /// pull); `None` if not. Known diffIDs let the manager find layers that
    /// are already present without downloading anything.
    fn diff_id(&self) -> Option<DiffId>;

    /// Fetches the blob. Called once per attempt (see [`RetryPolicy`]),
    /// from the layer's transfer task, while the transfer holds a
    /// concurrency slot; the slot is given back when this returns, so it
    /// should return once the bytes are safely received (e.g. in a local
    /// file), not hand back a live network stream.
    ///
    /// `cancel` is the transfer's own token (fires when every pull watching
    /// this layer has gone); pass it to all I/O. `progress` reaches every
    /// watcher of the layer: report "Downloading" there, e.g. with a
    /// [`ProgressReader`]. A [`Error::Failed`] error is retried, a
    /// [`Error::DoNotRetry`] one fails the layer at once. A value dropped
    /// unregistered (the transfer was cancelled, or the parent failed)
    /// should clean up after itself in `Drop`.
    fn download(
        &self,
        cancel: CancellationToken,
        progress: Arc<dyn ProgressOutput>,
    ) -> impl Future<Output = Result<Self::Blob, Error>> + Send;

    /// Called once the layer is in the store under `diff_id`: after its
    /// registration, or when it was found "Already exists". Use it to record
    /// the blob → diffID mapping. Default: nothing.
    fn registered(&self, diff_id: &DiffId) {
        let _ = diff_id;
    }

    /// Called once, at the end of this descriptor's transfer task, when the
    /// manager will not call `download` again (e.g. to delete a temporary
    /// file the blob was not handed over from). Not called for descriptors
    /// that were never downloaded (already present, joined, or duplicates):
    /// put cleanup that must always happen in `Drop`. Default: nothing.
    fn close(&self) {}
}

/// A handle on a layer in the store, as returned by [`LayerStore::get`] and
/// [`LayerStore::register`]; holding one keeps the layer referenced until
/// it is passed to [`LayerStore::release`].
pub trait Layer: Clone + Send + Sync + 'static {
    /// The digest of the layer's uncompressed content.
    fn diff_id(&self) -> DiffId;
    /// The layer's chain ID (its identity with all its parents).
    fn chain_id(&self) -> ChainId;
}

/// Where downloaded layers are registered: the local layer store.
///
/// Execution model: `chain_id` and `get` are called from the task running
/// [`DownloadManager::download`]; `register`, `register_again` and
/// `release` from layer transfer tasks or tasks the manager spawns. Calls
/// for different layers may run concurrently. Every handle obtained from
/// `get`, `register` or `register_again` is eventually passed to `release`
/// exactly once.
pub trait LayerStore: Send + Sync + 'static {
    /// The store's layer handle.
    type Layer: Layer;

    /// What a download hands to registration (see
    /// [`DownloadDescriptor::Blob`]); [`LayerBlob`] for a store that reads
    /// a stream.
    type Blob: Send + 'static;

    /// The chain ID of the layer with diffID `diff_id` on top of `parent`
    /// (`None`: at the bottom): `chain(1) = diffID(1)`,
    /// `chain(n) = "sha256:" + hex(sha256(chain(n-1) + " " + diffID(n)))`.
    fn chain_id(&self, parent: Option<&ChainId>, diff_id: &DiffId) -> ChainId;

    /// The layer with this chain ID, referenced, if the store has it. A
    /// store that cannot tell (an I/O error) answers `None`; the layer is
    /// then downloaded again.
    fn get(&self, chain_id: &ChainId) -> impl Future<Output = Option<Self::Layer>> + Send;

    /// Registers `blob`, the value this layer's own download returned, as a
    /// new layer on top of `parent` and returns it, referenced. Report
    /// "Extracting" to `registration`'s progress; once its token fires,
    /// stop and leave nothing behind. An error fails the layer with
    /// "failed to register layer: …" (never retried).
    fn register(
        &self,
        blob: Self::Blob,
        parent: Option<&ChainId>,
        registration: &Registration,
    ) -> impl Future<Output = Result<Self::Layer, Error>> + Send;

    /// Registers the content of `layer` (registered earlier in this pull)
    /// again, on top of `parent`: for a layer that appears twice in one
    /// image. Errors as for `register`.
    fn register_again(
        &self,
        layer: &Self::Layer,
        parent: Option<&ChainId>,
        registration: &Registration,
    ) -> impl Future<Output = Result<Self::Layer, Error>> + Send;

    /// Drops one reference on `layer`. Errors are the store's to log.
    fn release(&self, layer: Self::Layer) -> impl Future<Output = ()> + Send;
}

/// A layer a transfer registered, with the diffIDs of its whole chain
/// (bottom-most first, this layer last): what a pull reads its image's
/// diffIDs from, like walking a layer's parents.
#[derive(Debug, Clone)]
pub struct RegisteredLayer<L> {
    layer: L,
    chain: Arc<[DiffId]>,
}

impl<L> RegisteredLayer<L> {
    /// The layer handle.
    pub fn layer(&self) -> &L {
        &self.layer
    }

    /// The diffIDs from the bottom of the image up to this layer.
    pub fn chain_diff_ids(&self) -> &[DiffId] {
        &self.chain
    }
}

fn chain_with(below: &[DiffId], top: DiffId) -> Arc<[DiffId]> {
    below.iter().cloned().chain(std::iter::once(top)).collect()
}

/// Pulls layers through a [`TransferManager`]; see the module docs.
/// Clones share the store, the transfers and the slots.
pub struct DownloadManager<S: LayerStore> {
    store: Arc<S>,
    transfers: TransferManager<RegisteredLayer<S::Layer>>,
    retry: RetryPolicy,
}

impl<S: LayerStore> Clone for DownloadManager<S> {
    fn clone(&self) -> Self {
        DownloadManager {
            store: Arc::clone(&self.store),
            transfers: self.transfers.clone(),
            retry: self.retry,
        }
    }
}

impl<S: LayerStore> std::fmt::Debug for DownloadManager<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownloadManager")
            .field("transfers", &self.transfers)
            .field("retry", &self.retry)
            .finish()
    }
}

impl<S: LayerStore> DownloadManager<S> {
    /// Downloads running at once by default.
    pub const DEFAULT_CONCURRENCY: usize = 3;

    /// A manager registering into `store`, with 3 concurrent downloads and
    /// the default [`RetryPolicy`] (5 attempts, one-second ticks).
    pub fn new(store: Arc<S>) -> Self {
        DownloadManager {
            store,
            transfers: TransferManager::new(Self::DEFAULT_CONCURRENCY),
            retry: RetryPolicy::default(),
        }
    }

    /// Sets the number of concurrent downloads (0 = unlimited).
    pub fn with_concurrency(self, concurrency: usize) -> Self {
        self.transfers.set_concurrency(concurrency);
        self
    }

    /// Sets the retry policy.
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Changes the number of concurrent downloads at run time.
    pub fn set_concurrency(&self, concurrency: usize) {
        self.transfers.set_concurrency(concurrency);
    }

    /// The underlying transfer manager (for its counters).
    pub fn transfers(&self) -> &TransferManager<RegisteredLayer<S::Layer>> {
        &self.transfers
    }

    /// Pulls `layers` (bottom-most first) into the store and returns their
    /// diffIDs with a handle to release once the image is created; see the
    /// module docs. Progress goes to `output`; `cancel` is the caller's
    /// token. Must be called within a Tokio runtime.
    pub async fn download<D: DownloadDescriptor<Blob = S::Blob>>(
        &self,
        cancel: &CancellationToken,
        layers: &[Arc<D>],
        output: Arc<dyn ProgressOutput>,
    ) -> Result<(Vec<DiffId>, ReleaseHandle<S>), Error> {
        let mut present_diff_ids = Vec::new();
        let mut present_top = LayerRef::<S>::none();
        let mut probing = true;
        let mut transfer_key = String::new();
        let mut held: Vec<Watcher<RegisteredLayer<S::Layer>>> = Vec::new();
        let mut first_download_of_key: HashMap<String, Transfer<RegisteredLayer<S::Layer>>> =
            HashMap::new();

        let mut looked_up = self.look_up_present(layers).await.into_iter();
        for descriptor in layers {
            if cancel.is_cancelled() {
                release_all(held).await;
                present_top.release().await;
                return Err(Error::Cancelled);
            }
            let key = descriptor.key();
            transfer_key.push_str(&key);

            if probing {
                probing = false;
                if let Some(layer) = looked_up.next().and_then(LayerRef::into_layer) {
                    output.status(&descriptor.id(), Status::AlreadyExists);
                    let diff_id = layer.diff_id();
                    present_top.replace(Arc::clone(&self.store), layer).await;
                    descriptor.registered(&diff_id);
                    present_diff_ids.push(diff_id);
                    probing = true;
                    continue;
                }
                // Layers above the first missing one are downloaded, as
                // a missing layer's chain cannot be on top of it yet.
                for unused in looked_up.by_ref() {
                    unused.release().await;
                }
            }

            let parent = held.last().map(|top| top.transfer().clone());
            let watcher = match (first_download_of_key.get(&key), parent) {
                (Some(source), Some(parent)) => {
                    let store = Arc::clone(&self.store);
                    let descriptor = Arc::clone(descriptor);
                    let source = source.clone();
                    let span = tracing::info_span!("layer", id = %descriptor.id());
                    let work = move |ctx| {
                        reregister_layer(ctx, store, descriptor, source, parent).instrument(span)
                    };
                    self.transfers
                        .transfer(transfer_key.clone(), work, Arc::clone(&output))
                        .await
                }
                (_, parent) => {
                    output.status(&descriptor.id(), Status::PullingFsLayer);
                    let parent = match parent {
                        Some(transfer) => Parent::Download(transfer),
                        None => Parent::Present {
                            chain_id: present_top.chain_id(),
                            diff_ids: present_diff_ids.clone(),
                        },
                    };
                    let store = Arc::clone(&self.store);
                    let retry = self.retry;
                    let layer = Arc::clone(descriptor);
                    // The transfer's span is a child of the caller's (a
                    // pull's), so its log lines say which layer of which image.
                    let span = tracing::info_span!("layer", id = %layer.id());
                    let work = move |ctx| {
                        download_layer(ctx, store, layer, parent, retry).instrument(span)
                    };
                    let watcher = self
                        .transfers
                        .transfer(transfer_key.clone(), work, Arc::clone(&output))
                        .await;
                    first_download_of_key
                        .entry(key)
                        .or_insert_with(|| watcher.transfer().clone());
                    watcher
                }
            };
            held.push(watcher);
        }

        let Some(top) = held.last().map(|top| top.transfer().clone()) else {
            // Nothing to download (every layer present, or no layers at all).
            return Ok((present_diff_ids, ReleaseHandle::layer(present_top)));
        };

        let outcome = tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(Error::Cancelled),
            result = top.wait() => result,
        };
        let registered = match outcome {
            Ok(registered) => registered,
            Err(err) => {
                release_all(held).await;
                present_top.release().await;
                return Err(err);
            }
        };
        // The image's diffIDs are those of the top layer's own chain, not
        // of the transfers this call holds: a joined transfer for layer N
        // sits on the chain of whoever started it.
        let diff_ids = registered.chain_diff_ids().to_vec();
        if diff_ids.len() != layers.len() {
            release_all(held).await;
            present_top.release().await;
            return Err(Error::TooFewParentLayers);
        }

        let top_watcher = held
            .pop()
            .expect("held is not empty: it has a top transfer");
        top_watcher.delivered().await;
        release_all(held).await;
        present_top.release().await;
        Ok((diff_ids, ReleaseHandle::watcher(top_watcher)))
    }

    /// Looks up, a few at a time, every layer of `layers` from the bottom
    /// up to the first whose diffID is unknown (chain IDs follow from the
    /// diffIDs alone): an image whose layers are all present then costs
    /// one lookup per core at a time instead of one after another. The
    /// handles not used are released when dropped.
    async fn look_up_present<D: DownloadDescriptor>(&self, layers: &[Arc<D>]) -> Vec<LayerRef<S>> {
        let mut chain_ids = Vec::new();
        let mut below: Option<ChainId> = None;
        for descriptor in layers {
            let Some(diff_id) = descriptor.diff_id() else {
                break;
            };
            let chain_id = self.store.chain_id(below.as_ref(), &diff_id);
            below = Some(chain_id.clone());
            chain_ids.push(chain_id);
        }
        futures::stream::iter(chain_ids)
            .map(|chain_id| async move {
                let found = self.store.get(&chain_id).await;
                LayerRef {
                    held: found.map(|layer| (Arc::clone(&self.store), layer)),
                }
            })
            .buffered(LOOKUPS_AT_ONCE)
            .collect()
            .await
    }
}

/// Store lookups [`DownloadManager::download`] runs at once when it checks
/// which layers are present.
const LOOKUPS_AT_ONCE: usize = 4;

/// Releases watchers top-most first, each waiting for its last record.
async fn release_all<T>(held: Vec<Watcher<T>>) {
    futures::future::join_all(held.into_iter().rev().map(Watcher::release)).await;
}

/// What a downloaded layer is registered on.
enum Parent<L> {
    /// A layer already in the store (or none: the bottom of the image),
    /// with the diffIDs of its chain.
    Present {
        chain_id: Option<ChainId>,
        diff_ids: Vec<DiffId>,
    },
    /// The layer being downloaded just below.
    Download(Transfer<RegisteredLayer<L>>),
}

/// The work of one layer's transfer: wait for a slot, download with
/// retries, give the slot back, wait for the parent, register.
async fn download_layer<S: LayerStore, D: DownloadDescriptor<Blob = S::Blob>>(
    ctx: TransferContext,
    store: Arc<S>,
    descriptor: Arc<D>,
    parent: Parent<S::Layer>,
    retry: RetryPolicy,
) -> Result<RegisteredLayer<S::Layer>, Error> {
    let _close = CloseWhenDone(Arc::clone(&descriptor));
    let id = descriptor.id();
    let progress = ctx.progress();
    if !ctx.has_slot() {
        progress.status(&id, Status::Waiting);
        ctx.acquire_slot().await?;
    }
    if let Parent::Download(parent) = &parent {
        if let Some(Err(err)) = parent.result() {
            return Err(err);
        }
    }

    let cancel = ctx.cancellation_token().clone();
    let blob = retry
        .run(Operation::Download, &id, &cancel, &*progress, || {
            descriptor.download(cancel.clone(), Arc::clone(&progress))
        })
        .await?;
    ctx.release_slot();

    let (parent_chain_id, below) = match parent {
        Parent::Present { chain_id, diff_ids } => (chain_id, Arc::from(diff_ids)),
        Parent::Download(parent) => {
            let parent = wait_for_layer(&ctx, &parent).await?;
            (Some(parent.layer.chain_id()), parent.chain)
        }
    };
    let registration = Registration {
        id: id.clone(),
        progress: Arc::clone(&progress),
        cancel,
    };
    let registered = store
        .register(blob, parent_chain_id.as_ref(), &registration)
        .await;
    let layer = registration_outcome(&ctx, registered)?;
    progress.status(&id, Status::PullComplete);
    descriptor.registered(&layer.diff_id());
    release_layer_when_released(&ctx, store, layer.clone());
    Ok(RegisteredLayer {
        chain: chain_with(&below, layer.diff_id()),
        layer,
    })
}

/// The work of a layer that appears a second time in one image: register
/// the earlier layer's content again, on top of this layer's parent. It
/// moves no data over the network, so it gives its slot up at once, and it
/// writes no progress (its id's line belongs to the earlier layer).
async fn reregister_layer<S: LayerStore, D: DownloadDescriptor>(
    ctx: TransferContext,
    store: Arc<S>,
    descriptor: Arc<D>,
    source: Transfer<RegisteredLayer<S::Layer>>,
    parent: Transfer<RegisteredLayer<S::Layer>>,
) -> Result<RegisteredLayer<S::Layer>, Error> {
    ctx.release_slot();
    let parent = wait_for_layer(&ctx, &parent).await?;
    let source = wait_for_layer(&ctx, &source).await?;
    let registration = Registration {
        id: descriptor.id(),
        progress: Arc::new(crate::progress::DiscardOutput),
        cancel: ctx.cancellation_token().clone(),
    };
    let parent_chain_id = parent.layer.chain_id();
    let registered = store
        .register_again(&source.layer, Some(&parent_chain_id), &registration)
        .await;
    let layer = registration_outcome(&ctx, registered)?;
    descriptor.registered(&layer.diff_id());
    release_layer_when_released(&ctx, store, layer.clone());
    Ok(RegisteredLayer {
        chain: chain_with(&parent.chain, layer.diff_id()),
        layer,
    })
}

/// Waits for another layer's transfer and adopts its error as is.
async fn wait_for_layer<L: Clone>(
    ctx: &TransferContext,
    transfer: &Transfer<L>,
) -> Result<L, Error> {
    let layer = tokio::select! {
        biased;
        result = transfer.wait() => result?,
        _ = ctx.cancelled() => return Err(Error::RegistrationCancelled),
    };
    if ctx.is_cancelled() {
        return Err(Error::RegistrationCancelled);
    }
    Ok(layer)
}

/// A store's registration result, as the layer's transfer reports it.
fn registration_outcome<L>(
    ctx: &TransferContext,
    registered: Result<L, Error>,
) -> Result<L, Error> {
    match registered {
        Ok(layer) => Ok(layer),
        Err(_) if ctx.is_cancelled() => Err(Error::RegistrationCancelled),
        Err(err) => Err(Error::RegisterLayer(Box::new(err))),
    }
}

/// The transfer's result holds a layer reference for every pull that joins
/// it; it is dropped once nobody watches the transfer any more.
fn release_layer_when_released<S: LayerStore>(
    ctx: &TransferContext,
    store: Arc<S>,
    layer: S::Layer,
) {
    let released = ctx.released();
    tokio::spawn(async move {
        released.await;
        store.release(layer).await;
    });
}

/// Calls [`DownloadDescriptor::close`] when the transfer task ends, however
/// it ends.
struct CloseWhenDone<D: DownloadDescriptor>(Arc<D>);

impl<D: DownloadDescriptor> Drop for CloseWhenDone<D> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// At most one referenced layer; released on `release()`, or by a spawned
/// task if dropped while still held.
struct LayerRef<S: LayerStore> {
    held: Option<(Arc<S>, S::Layer)>,
}

impl<S: LayerStore> LayerRef<S> {
    fn none() -> Self {
        LayerRef { held: None }
    }

    fn chain_id(&self) -> Option<ChainId> {
        self.held.as_ref().map(|(_, layer)| layer.chain_id())
    }

    /// The layer held, now the caller's to release.
    fn into_layer(mut self) -> Option<S::Layer> {
        self.held.take().map(|(_, layer)| layer)
    }

    /// Holds `layer` instead of the current one, which is released.
    async fn replace(&mut self, store: Arc<S>, layer: S::Layer) {
        if let Some((store, previous)) = self.held.replace((store, layer)) {
            store.release(previous).await;
        }
    }

    async fn release(mut self) {
        if let Some((store, layer)) = self.held.take() {
            store.release(layer).await;
        }
    }
}

impl<S: LayerStore> Drop for LayerRef<S> {
    fn drop(&mut self) {
        if let Some((store, layer)) = self.held.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { store.release(layer).await });
            } else {
                tracing::warn!("layer reference dropped outside a runtime; not released");
            }
        }
    }
}

/// Keeps a pulled image's layers referenced until the caller has used them
/// (typically: created the image). Release it with
/// [`ReleaseHandle::release`]; dropping it releases too, in the background.
pub struct ReleaseHandle<S: LayerStore> {
    kind: ReleaseKind<S>,
}

enum ReleaseKind<S: LayerStore> {
    /// Every layer was present: one store reference on the top layer.
    Layer(LayerRef<S>),
    /// The top-most download's transfer, still watched.
    Watcher(Watcher<RegisteredLayer<S::Layer>>),
}

impl<S: LayerStore> std::fmt::Debug for ReleaseHandle<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            ReleaseKind::Layer(layer) => format!("layer {:?}", layer.chain_id()),
            ReleaseKind::Watcher(watcher) => format!("transfer {}", watcher.transfer().key()),
        };
        f.debug_struct("ReleaseHandle")
            .field("holds", &kind)
            .finish()
    }
}

impl<S: LayerStore> ReleaseHandle<S> {
    fn layer(layer: LayerRef<S>) -> Self {
        ReleaseHandle {
            kind: ReleaseKind::Layer(layer),
        }
    }

    fn watcher(watcher: Watcher<RegisteredLayer<S::Layer>>) -> Self {
        ReleaseHandle {
            kind: ReleaseKind::Watcher(watcher),
        }
    }

    /// The chain ID of the image's top layer, if the image has layers.
    pub fn top_chain_id(&self) -> Option<ChainId> {
        match &self.kind {
            ReleaseKind::Layer(layer) => layer.chain_id(),
            ReleaseKind::Watcher(watcher) => watcher
                .transfer()
                .result()
                .and_then(Result::ok)
                .map(|registered| registered.layer.chain_id()),
        }
    }

    /// Lets the layers go: the store's own references (from the image, from
    /// child layers) keep what is still used.
    pub async fn release(self) {
        match self.kind {
            ReleaseKind::Layer(layer) => layer.release().await,
            ReleaseKind::Watcher(watcher) => watcher.release().await,
        }
    }
}
