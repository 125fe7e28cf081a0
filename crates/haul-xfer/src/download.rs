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
//!    parent's transfer, registers the blob on top of it ("Extracting"),
//!    and reports "Pull complete".
//! 3. **The same layer twice in one image** (same key further up) is not
//!    downloaded again and reports nothing of its own (its line is the
//!    earlier one's): it re-registers the earlier layer's content on top of
//!    its own parent.
//! 4. **Holding.** Every transfer this call joined or started stays watched
//!    until the call returns, so a parent cannot be cancelled under a child.
//!    On success the top-most transfer stays watched inside the returned
//!    [`ReleaseHandle`], which keeps the downloaded chain referenced until
//!    the caller (having created its image) releases it.
//!
//! It returns the image's diffIDs, bottom-most first, or the first error on
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

use tokio::io::AsyncRead;
use tokio_util::sync::CancellationToken;

use crate::cancel_reader::CancelAwareReader;
use crate::error::{Error, Operation};
use crate::ids::{ChainId, DiffId};
use crate::manager::{TransferContext, TransferManager};
use crate::progress::ProgressOutput;
use crate::progress_reader::ProgressReader;
use crate::retry::RetryPolicy;
use crate::transfer::{Transfer, Watcher};

/// A layer's bytes, as handed from a descriptor to the layer store.
pub type LayerStream = Pin<Box<dyn AsyncRead + Send>>;

/// What a successful [`DownloadDescriptor::download`] returns.
pub struct LayerBlob {
    /// The layer blob, exactly as stored in the registry (typically
    /// compressed); the layer store detects the compression.
    pub stream: LayerStream,
    /// Its length in bytes, 0 if unknown; used for "Extracting" progress.
    pub size: u64,
    /// The layer's diffID, when the descriptor already computed it from the
    /// bytes it fetched (for instance because it unpacked the layer into the
    /// store while downloading it). Passed on to [`LayerStore::register`],
    /// which may then use that prepared work instead of reading `stream`.
    pub diff_id: Option<DiffId>,
}

impl std::fmt::Debug for LayerBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerBlob")
            .field("size", &self.size)
            .finish()
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
    /// [`Error::DoNotRetry`] one fails the layer at once.
    fn download(
        &self,
        cancel: CancellationToken,
        progress: Arc<dyn ProgressOutput>,
    ) -> impl Future<Output = Result<LayerBlob, Error>> + Send;

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
/// [`DownloadManager::download`]; `register`, `diff_stream` and `release`
/// from layer transfer tasks or tasks the manager spawns. Calls for
/// different layers may run concurrently. Every handle obtained from `get`
/// or `register` is eventually passed to `release` exactly once.
pub trait LayerStore: Send + Sync + 'static {
    /// The store's layer handle.
    type Layer: Layer;

    /// The chain ID of the layer with diffID `diff_id` on top of `parent`
    /// (`None`: at the bottom): `chain(1) = diffID(1)`,
    /// `chain(n) = "sha256:" + hex(sha256(chain(n-1) + " " + diffID(n)))`.
    fn chain_id(&self, parent: Option<&ChainId>, diff_id: &DiffId) -> ChainId;

    /// The layer with this chain ID, referenced, if the store has it. A
    /// store that cannot tell (an I/O error) answers `None`; the layer is
    /// then downloaded again.
    fn get(&self, chain_id: &ChainId) -> impl Future<Output = Option<Self::Layer>> + Send;

    /// Unpacks `stream` (a layer blob, possibly compressed) as a new layer
    /// on top of `parent` and returns it, referenced. `diff_id` is the
    /// descriptor's [`LayerBlob::diff_id`] (or, for a layer seen twice in an
    /// image, the earlier copy's diffID): a store that already holds that
    /// layer unpacked, waiting for its parent, may register it without
    /// reading `stream`. The stream fails with an I/O error once the
    /// transfer is cancelled; a store should then leave nothing behind. An
    /// error fails the layer with "failed to register layer: …" (never
    /// retried).
    fn register(
        &self,
        stream: LayerStream,
        diff_id: Option<&DiffId>,
        parent: Option<&ChainId>,
    ) -> impl Future<Output = Result<Self::Layer, Error>> + Send;

    /// The uncompressed content (tar stream) of a registered layer. Only
    /// called when the same layer appears twice in one image, to register
    /// it a second time on another parent.
    fn diff_stream(
        &self,
        layer: &Self::Layer,
    ) -> impl Future<Output = Result<LayerStream, Error>> + Send;

    /// Drops one reference on `layer`. Errors are the store's to log.
    fn release(&self, layer: Self::Layer) -> impl Future<Output = ()> + Send;
}

/// Pulls layers through a [`TransferManager`]; see the module docs.
/// Clones share the store, the transfers and the slots.
pub struct DownloadManager<S: LayerStore> {
    store: Arc<S>,
    transfers: TransferManager<S::Layer>,
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
    pub fn transfers(&self) -> &TransferManager<S::Layer> {
        &self.transfers
    }

    /// Pulls `layers` (bottom-most first) into the store and returns their
    /// diffIDs with a handle to release once the image is created; see the
    /// module docs. Progress goes to `output`; `cancel` is the caller's
    /// token. Must be called within a Tokio runtime.
    pub async fn download<D: DownloadDescriptor>(
        &self,
        cancel: &CancellationToken,
        layers: &[Arc<D>],
        output: Arc<dyn ProgressOutput>,
    ) -> Result<(Vec<DiffId>, ReleaseHandle<S>), Error> {
        let mut present_diff_ids = Vec::new();
        let mut present_top = LayerRef::<S>::none();
        let mut probing = true;
        let mut transfer_key = String::new();
        let mut held: Vec<Watcher<S::Layer>> = Vec::new();
        let mut first_download_of_key: HashMap<String, Transfer<S::Layer>> = HashMap::new();

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
                if let Some(layer) = self.find_present(descriptor.as_ref(), &present_top).await {
                    output.update(&descriptor.id(), "Already exists");
                    let diff_id = layer.diff_id();
                    present_top.replace(Arc::clone(&self.store), layer).await;
                    descriptor.registered(&diff_id);
                    present_diff_ids.push(diff_id);
                    probing = true;
                    continue;
                }
            }

            let parent = held.last().map(|top| top.transfer().clone());
            let watcher = match (first_download_of_key.get(&key), parent) {
                (Some(source), Some(parent)) => {
                    let store = Arc::clone(&self.store);
                    let descriptor = Arc::clone(descriptor);
                    let source = source.clone();
                    let work = move |ctx| reregister_layer(ctx, store, descriptor, source, parent);
                    self.transfers
                        .transfer(transfer_key.clone(), work, Arc::clone(&output))
                        .await
                }
                (_, parent) => {
                    output.update(&descriptor.id(), "Pulling fs layer");
                    let parent = match parent {
                        Some(transfer) => Parent::Download(transfer),
                        None => Parent::Present(present_top.chain_id()),
                    };
                    let store = Arc::clone(&self.store);
                    let retry = self.retry;
                    let layer = Arc::clone(descriptor);
                    let work = move |ctx| download_layer(ctx, store, layer, parent, retry);
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
        if let Err(err) = outcome {
            release_all(held).await;
            present_top.release().await;
            return Err(err);
        }

        let downloaded: Option<Vec<DiffId>> = held
            .iter()
            .map(|watcher| {
                let layer = watcher.transfer().result()?.ok()?;
                Some(layer.diff_id())
            })
            .collect();
        let diff_ids = match downloaded {
            Some(downloaded) if present_diff_ids.len() + downloaded.len() == layers.len() => {
                let mut diff_ids = present_diff_ids;
                diff_ids.extend(downloaded);
                diff_ids
            }
            _ => {
                release_all(held).await;
                present_top.release().await;
                return Err(Error::TooFewParentLayers);
            }
        };

        let top_watcher = held
            .pop()
            .expect("held is not empty: it has a top transfer");
        top_watcher.delivered().await;
        release_all(held).await;
        present_top.release().await;
        Ok((diff_ids, ReleaseHandle::watcher(top_watcher)))
    }

    /// The layer `descriptor` describes, if its diffID is known and the
    /// store has it on top of `below`.
    async fn find_present<D: DownloadDescriptor>(
        &self,
        descriptor: &D,
        below: &LayerRef<S>,
    ) -> Option<S::Layer> {
        let diff_id = descriptor.diff_id()?;
        let chain_id = self.store.chain_id(below.chain_id().as_ref(), &diff_id);
        self.store.get(&chain_id).await
    }
}

/// Releases watchers top-most first, each waiting for its last record.
async fn release_all<T>(held: Vec<Watcher<T>>) {
    futures::future::join_all(held.into_iter().rev().map(Watcher::release)).await;
}

/// What a downloaded layer is registered on.
enum Parent<L> {
    /// A layer already in the store (or none: the bottom of the image).
    Present(Option<ChainId>),
    /// The layer being downloaded just below.
    Download(Transfer<L>),
}

/// The work of one layer's transfer: wait for a slot, download with
/// retries, give the slot back, wait for the parent, register.
async fn download_layer<S: LayerStore, D: DownloadDescriptor>(
    ctx: TransferContext,
    store: Arc<S>,
    descriptor: Arc<D>,
    parent: Parent<S::Layer>,
    retry: RetryPolicy,
) -> Result<S::Layer, Error> {
    let _close = CloseWhenDone(Arc::clone(&descriptor));
    let id = descriptor.id();
    let progress = ctx.progress();
    if !ctx.has_slot() {
        progress.update(&id, "Waiting");
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

    let parent_chain_id = match parent {
        Parent::Present(chain_id) => chain_id,
        Parent::Download(parent) => Some(wait_for_layer(&ctx, &parent).await?.chain_id()),
    };
    let diff_id = blob.diff_id;
    let stream = ProgressReader::new(
        CancelAwareReader::new(blob.stream, &cancel),
        Arc::clone(&progress),
        id.clone(),
        "Extracting",
        blob.size,
    );
    let layer = register(
        &ctx,
        store.as_ref(),
        Box::pin(stream),
        diff_id.as_ref(),
        parent_chain_id.as_ref(),
    )
    .await?;
    progress.update(&id, "Pull complete");
    descriptor.registered(&layer.diff_id());
    release_layer_when_released(&ctx, store, layer.clone());
    Ok(layer)
}

/// The work of a layer that appears a second time in one image: register
/// the earlier layer's content again, on top of this layer's parent. It
/// moves no data over the network, so it gives its slot up at once, and it
/// writes no progress (its id's line belongs to the earlier layer).
async fn reregister_layer<S: LayerStore, D: DownloadDescriptor>(
    ctx: TransferContext,
    store: Arc<S>,
    descriptor: Arc<D>,
    source: Transfer<S::Layer>,
    parent: Transfer<S::Layer>,
) -> Result<S::Layer, Error> {
    ctx.release_slot();
    let parent_layer = wait_for_layer(&ctx, &parent).await?;
    let source_layer = wait_for_layer(&ctx, &source).await?;
    let diff = match store.diff_stream(&source_layer).await {
        Ok(diff) => diff,
        Err(_) if ctx.is_cancelled() => return Err(Error::RegistrationCancelled),
        Err(err) => return Err(Error::RegisterLayer(Box::new(err))),
    };
    let stream = CancelAwareReader::new(diff, ctx.cancellation_token());
    let parent_chain_id = parent_layer.chain_id();
    let layer = register(
        &ctx,
        store.as_ref(),
        Box::pin(stream),
        Some(&source_layer.diff_id()),
        Some(&parent_chain_id),
    )
    .await?;
    descriptor.registered(&layer.diff_id());
    release_layer_when_released(&ctx, store, layer.clone());
    Ok(layer)
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

async fn register<S: LayerStore>(
    ctx: &TransferContext,
    store: &S,
    stream: LayerStream,
    diff_id: Option<&DiffId>,
    parent: Option<&ChainId>,
) -> Result<S::Layer, Error> {
    match store.register(stream, diff_id, parent).await {
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
    Watcher(Watcher<S::Layer>),
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

    fn watcher(watcher: Watcher<S::Layer>) -> Self {
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
                .map(|layer| layer.chain_id()),
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
