//! The upload manager: pushes an image's layers in parallel.
//!
//! # What [`UploadManager::upload`] does
//!
//! 1. Writes "Preparing" for every descriptor, duplicates included.
//! 2. Starts (or joins) one transfer per distinct key; the caller makes keys
//!    of repository and layer, so two pushes of one layer to one repository
//!    share the work, while pushes to two registries do not. A transfer
//!    waits for a slot ("Waiting"), then calls
//!    [`UploadDescriptor::upload`] with retries ("Retrying in N seconds");
//!    what is shown meanwhile ("Pushing", "Pushed", "Layer already exists",
//!    "Mounted from REPO") is the descriptor's to write. An upload holds its
//!    slot until it ends.
//! 3. Waits for the transfers in input order and returns the first error
//!    met that way; its watchers are then released, which cancels the
//!    uploads no other push is watching. The caller's token firing returns
//!    [`Error::Cancelled`] the same way.
//! 4. On success tells every descriptor, duplicates and those whose upload
//!    another push did included, where its layer is now
//!    ([`UploadDescriptor::set_remote_descriptor`]), and returns the same
//!    remote descriptors in input order.
//!
//! By the time `upload` returns, every record has been written to the
//! output, and none will follow.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::{Error, Operation};
use crate::manager::{TransferContext, TransferManager};
use crate::progress::{ProgressOutput, Status};
use crate::retry::RetryPolicy;
use crate::transfer::Watcher;

/// Where a layer lives in the registry after its upload.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RemoteDescriptor {
    /// The blob's digest, e.g. `sha256:…` of the compressed layer.
    pub digest: String,
    /// The blob's size in bytes.
    pub size: u64,
    /// The blob's media type.
    pub media_type: String,
}

/// One layer of an image to push, as the push flow describes it.
///
/// Execution model: the manager calls `key`, `id` and
/// `set_remote_descriptor` on the task running [`UploadManager::upload`];
/// `upload` is called from the layer's transfer task. A descriptor whose
/// key is already being uploaded is never asked to upload: the transfer in
/// flight is joined, and its result is handed to this descriptor too.
pub trait UploadDescriptor: Send + Sync + 'static {
    /// The deduplication key: repository (with registry host) and layer,
    /// e.g. `"v2push:" + repository + " " + diffID`.
    fn key(&self) -> String;

    /// The id progress records carry, e.g. the short diffID.
    fn id(&self) -> String;

    /// Pushes the layer (or finds it already there, or mounts it) and says
    /// where it is. Called once per attempt (see [`RetryPolicy`]), while
    /// the transfer holds a concurrency slot. `cancel` is the transfer's
    /// own token (fires when every push watching this upload has gone);
    /// `progress` reaches every watcher: report "Pushing", "Pushed",
    /// "Layer already exists", "Mounted from REPO" there. A
    /// [`Error::Failed`] error is retried, a [`Error::DoNotRetry`] one fails
    /// the push at once.
    fn upload(
        &self,
        cancel: CancellationToken,
        progress: Arc<dyn ProgressOutput>,
    ) -> impl Future<Output = Result<RemoteDescriptor, Error>> + Send;

    /// Tells the descriptor where its layer is, once every upload of the
    /// call succeeded. Called exactly once per descriptor then.
    fn set_remote_descriptor(&self, descriptor: RemoteDescriptor);
}

/// Pushes layers through a [`TransferManager`]; see the module docs.
/// Clones share the transfers and the slots.
#[derive(Debug, Clone)]
pub struct UploadManager {
    transfers: TransferManager<RemoteDescriptor>,
    retry: RetryPolicy,
}

impl Default for UploadManager {
    fn default() -> Self {
        UploadManager::new()
    }
}

impl UploadManager {
    /// Uploads running at once by default.
    pub const DEFAULT_CONCURRENCY: usize = 5;

    /// A manager with 5 concurrent uploads and the default [`RetryPolicy`]
    /// (5 attempts, one-second ticks).
    pub fn new() -> Self {
        UploadManager {
            transfers: TransferManager::new(Self::DEFAULT_CONCURRENCY),
            retry: RetryPolicy::default(),
        }
    }

    /// Sets the number of concurrent uploads (0 = unlimited).
    pub fn with_concurrency(self, concurrency: usize) -> Self {
        self.transfers.set_concurrency(concurrency);
        self
    }

    /// Sets the retry policy.
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Changes the number of concurrent uploads at run time.
    pub fn set_concurrency(&self, concurrency: usize) {
        self.transfers.set_concurrency(concurrency);
    }

    /// The underlying transfer manager (for its counters).
    pub fn transfers(&self) -> &TransferManager<RemoteDescriptor> {
        &self.transfers
    }

    /// Pushes `layers`; see the module docs. Progress goes to `output`;
    /// `cancel` is the caller's token. Must be called within a Tokio
    /// runtime.
    pub async fn upload<D: UploadDescriptor>(
        &self,
        cancel: &CancellationToken,
        layers: &[Arc<D>],
        output: Arc<dyn ProgressOutput>,
    ) -> Result<Vec<RemoteDescriptor>, Error> {
        for descriptor in layers {
            output.status(&descriptor.id(), Status::Preparing);
        }

        let keys: Vec<String> = layers.iter().map(|descriptor| descriptor.key()).collect();
        let mut watchers: Vec<Watcher<RemoteDescriptor>> = Vec::new();
        let mut index_of_key: HashMap<&str, usize> = HashMap::new();
        for (descriptor, key) in layers.iter().zip(&keys) {
            if cancel.is_cancelled() {
                release_all(watchers).await;
                return Err(Error::Cancelled);
            }
            if index_of_key.contains_key(key.as_str()) {
                continue;
            }
            let descriptor = Arc::clone(descriptor);
            let retry = self.retry;
            let span = tracing::info_span!("layer", id = %descriptor.id());
            let work = move |ctx| upload_layer(ctx, descriptor, retry).instrument(span);
            let watcher = self
                .transfers
                .transfer(key.clone(), work, Arc::clone(&output))
                .await;
            index_of_key.insert(key, watchers.len());
            watchers.push(watcher);
        }

        let mut uploaded = Vec::with_capacity(watchers.len());
        let mut failure = None;
        for watcher in &watchers {
            let outcome = tokio::select! {
                biased;
                _ = cancel.cancelled() => Err(Error::Cancelled),
                result = watcher.transfer().wait() => result,
            };
            match outcome {
                Ok(remote) => uploaded.push(remote),
                Err(err) => {
                    failure = Some(err);
                    break;
                }
            }
        }
        release_all(watchers).await;
        if let Some(err) = failure {
            return Err(err);
        }

        let remotes: Vec<RemoteDescriptor> = keys
            .iter()
            .map(|key| uploaded[index_of_key[key.as_str()]].clone())
            .collect();
        for (descriptor, remote) in layers.iter().zip(&remotes) {
            descriptor.set_remote_descriptor(remote.clone());
        }
        Ok(remotes)
    }
}

async fn release_all<T>(watchers: Vec<Watcher<T>>) {
    futures::future::join_all(watchers.into_iter().map(Watcher::release)).await;
}

/// The work of one upload's transfer: wait for a slot, upload with retries.
async fn upload_layer<D: UploadDescriptor>(
    ctx: TransferContext,
    descriptor: Arc<D>,
    retry: RetryPolicy,
) -> Result<RemoteDescriptor, Error> {
    let id = descriptor.id();
    let progress = ctx.progress();
    if !ctx.has_slot() {
        progress.status(&id, Status::Waiting);
        ctx.acquire_slot().await?;
    }
    let cancel = ctx.cancellation_token().clone();
    retry
        .run(Operation::Upload, &id, &cancel, &*progress, || {
            descriptor.upload(cancel.clone(), Arc::clone(&progress))
        })
        .await
}
