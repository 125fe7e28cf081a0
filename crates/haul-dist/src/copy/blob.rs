//! One blob of a copy, and how the copies of one [`crate::Copier`] share
//! the work of placing a blob on a target registry: the first copy that
//! needs a blob there moves it (or mounts it from a repository that has
//! it), every other copy that needs it in another repository of the same
//! registry waits for that and mounts it from there.
//!
//! The waiting happens before the waiting copy's transfer is started
//! ([`Placements::claim`]), so that it holds no upload slot meanwhile: in
//! a sync of many images that share a base layer, the slots stay with
//! blobs that can move now instead of with copies of the base layer
//! queued behind the one that is sending it.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;
use haul_oci::Digest;
use haul_registry::{BlobSource, Repository, ResumableUpload};
use haul_store::Store;
use haul_xfer::{short_id, ProgressOutput, RemoteDescriptor, Status, UploadDescriptor};
use tokio::io::AsyncRead;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use crate::error::into_transfer_error;
use crate::error::Result;
pub(crate) use crate::push::blob::Placed;
use crate::push::blob::{BlobOrigin, BlobTarget};
use crate::push::upload::{or_cancelled, Chunking};

/// Blob counts and bytes of a copy (or of every copy of a run).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Blobs whose bytes were sent to the target.
    pub blobs_moved: u64,
    /// Blobs the target repository had already.
    pub blobs_skipped: u64,
    /// Blobs mounted from another repository of the target registry.
    pub blobs_mounted: u64,
    /// Bytes of the moved blobs.
    pub bytes_moved: u64,
}

/// Shared counters behind [`CopyStats`].
#[derive(Debug, Clone, Default)]
pub(crate) struct Tally(Arc<[AtomicU64; 4]>);

impl Tally {
    pub(crate) fn add(&self, outcome: Placed, size: u64) {
        let i = match outcome {
            Placed::Moved => 0,
            Placed::Skipped => 1,
            Placed::Mounted => 2,
        };
        self.0[i].fetch_add(1, Ordering::Relaxed);
        if outcome == Placed::Moved {
            self.0[3].fetch_add(size, Ordering::Relaxed);
        }
    }

    pub(crate) fn snapshot(&self) -> CopyStats {
        let get = |i: usize| self.0[i].load(Ordering::Relaxed);
        CopyStats {
            blobs_moved: get(0),
            blobs_skipped: get(1),
            blobs_mounted: get(2),
            bytes_moved: get(3),
        }
    }
}

/// Which repository of each target registry holds (or is being given)
/// each blob in this run, and which repositories the run writes to.
#[derive(Clone, Default)]
pub(crate) struct Placements {
    inner: Arc<Mutex<PlacementsInner>>,
}

/// What a copy about to move a blob learns from [`Placements::claim`].
pub(crate) enum Claim {
    /// No other repository of the registry is being given the blob: this
    /// copy places it, and copies into other repositories wait until the
    /// claim is dropped.
    First(ClaimHeld),
    /// A copy into the same repository claimed it: the transfer manager
    /// joins the two.
    Join,
    /// A copy into another repository is placing it now: wait for that
    /// ([`Claim::wait`]), then mount it from there.
    Follow(tokio::sync::watch::Receiver<()>),
}

/// A held claim on placing a blob; dropping it lets the followers go.
pub(crate) type ClaimHeld = tokio::sync::watch::Sender<()>;

impl Claim {
    /// Until the claim followed is dropped, or `cancel` fires.
    pub(crate) async fn wait(self, cancel: &CancellationToken) -> Result<()> {
        if let Claim::Follow(mut placing) = self {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(crate::Error::Cancelled),
                // Nothing is ever sent: this ends when the sender drops.
                _ = placing.changed() => {}
            }
        }
        Ok(())
    }
}

#[derive(Default)]
struct PlacementsInner {
    /// `(registry, digest)` -> the repository that first got it.
    cells: HashMap<(String, Digest), Arc<OnceCell<String>>>,
    /// `(registry, digest)` -> the target (`registry/repository`) of the
    /// copy that claimed placing it, and a receiver that ends when that
    /// claim is dropped.
    claims: HashMap<(String, Digest), (String, tokio::sync::watch::Receiver<()>)>,
    /// `(registry/repository, digest)` -> how it got there in this run.
    outcomes: HashMap<(String, Digest), Placed>,
    /// registry -> repositories this run writes to.
    repositories: HashMap<String, HashSet<String>>,
}

impl Placements {
    pub(crate) fn expect_repository(&self, registry: &str, repository: &str) {
        lock(&self.inner)
            .repositories
            .entry(registry.to_string())
            .or_default()
            .insert(repository.to_string());
    }

    /// Claims placing `digest` on `registry` for a copy into `target`
    /// (`registry/repository`), unless a live claim is there already.
    pub(crate) fn claim(&self, registry: &str, target: &str, digest: &Digest) -> Claim {
        let mut inner = lock(&self.inner);
        let key = (registry.to_string(), digest.clone());
        if let Some((holder, placing)) = inner.claims.get(&key) {
            // An error means the sender is gone: the claim ended.
            if placing.has_changed().is_ok() {
                return if holder == target {
                    Claim::Join
                } else {
                    Claim::Follow(placing.clone())
                };
            }
        }
        let (held, placing) = tokio::sync::watch::channel(());
        inner.claims.insert(key, (target.to_string(), placing));
        Claim::First(held)
    }

    fn cell(&self, registry: &str, digest: &Digest) -> Arc<OnceCell<String>> {
        Arc::clone(
            lock(&self.inner)
                .cells
                .entry((registry.to_string(), digest.clone()))
                .or_default(),
        )
    }

    fn record(&self, target: &str, digest: &Digest, placed: Placed) {
        lock(&self.inner)
            .outcomes
            .insert((target.to_string(), digest.clone()), placed);
    }

    /// How `digest` got into `target` in this run, if it did.
    pub(crate) fn outcome(&self, target: &str, digest: &Digest) -> Option<Placed> {
        lock(&self.inner)
            .outcomes
            .get(&(target.to_string(), digest.clone()))
            .copied()
    }

    fn other_repositories(&self, registry: &str, except: &str) -> Vec<String> {
        let inner = lock(&self.inner);
        let mut names: Vec<String> = inner
            .repositories
            .get(registry)
            .into_iter()
            .flatten()
            .filter(|r| r.as_str() != except)
            .cloned()
            .collect();
        names.sort();
        names
    }
}

/// One blob of a copy.
pub(crate) struct CopyBlob {
    pub(crate) from: Repository,
    pub(crate) to: Repository,
    /// `registry/repository` of the target.
    pub(crate) target: String,
    pub(crate) digest: Digest,
    pub(crate) size: u64,
    pub(crate) media_type: String,
    pub(crate) chunking: Chunking,
    /// The upload session across this blob's attempts.
    pub(crate) upload: ResumableUpload,
    pub(crate) placements: Placements,
    /// The run's counters.
    pub(crate) totals: Tally,
    /// Where this blob's upload session is recorded, if anywhere.
    pub(crate) store: Option<Store>,
    /// This copy's claim on placing the blob, held until its first
    /// attempt ends.
    pub(crate) claim: Mutex<Option<ClaimHeld>>,
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
    fn remote(&self) -> RemoteDescriptor {
        RemoteDescriptor {
            digest: self.digest.to_string(),
            size: self.size,
            media_type: self.media_type.clone(),
        }
    }

    fn count(&self, placed: Placed) {
        self.totals.add(placed, self.size);
        self.placements.record(&self.target, &self.digest, placed);
        if placed != Placed::Moved {
            // A session a killed run recorded is of no more use.
            self.forget_session();
        }
    }

    fn forget_session(&self) {
        if let Some(store) = &self.store {
            if self.upload.session().is_none() {
                if let Err(e) = store.forget_upload(&self.target, &self.digest) {
                    tracing::debug!("cannot forget the upload record of {}: {e}", self.digest);
                }
            }
        }
    }

    fn target(&self) -> BlobTarget<'_> {
        BlobTarget {
            repo: &self.to,
            digest: &self.digest,
            size: self.size,
            chunking: self.chunking,
            upload: &self.upload,
            id: self.id(),
        }
    }

    async fn copy(
        &self,
        progress: &Arc<dyn ProgressOutput>,
        cancel: &CancellationToken,
    ) -> Result<RemoteDescriptor> {
        let target = self.target();
        let registry = self.to.registry().to_string();
        let cell = self.placements.cell(&registry, &self.digest);
        if target.exists(cancel).await? {
            let _ = cell.set(self.to.name().to_string());
            progress.status(&target.id, Status::LayerAlreadyExists);
            self.count(Placed::Skipped);
            return Ok(self.remote());
        }
        // The first copy of this run to need the blob on this registry
        // places it; the others wait, then mount it from there.
        let mut placed_here = None;
        let placing = AtomicBool::new(false);
        let holder = {
            let wait = cell.get_or_try_init(|| async {
                placing.store(true, Ordering::Relaxed);
                placed_here = Some(target.mount_or_upload(self, progress, cancel).await?);
                Ok::<_, crate::Error>(self.to.name().to_string())
            });
            tokio::pin!(wait);
            tokio::select! {
                biased;
                done = &mut wait => done?.clone(),
                _ = cancel.cancelled() => {
                    if !placing.load(Ordering::Relaxed) {
                        // Only waiting for another copy: stop now.
                        return Err(crate::Error::Cancelled);
                    }
                    // Placing it here: the upload stops by itself and
                    // cancels its session on the registry first.
                    wait.await?.clone()
                }
            }
        };
        if let Some(placed) = placed_here {
            self.count(placed);
            return Ok(self.remote());
        }
        if holder == self.to.name() {
            progress.status(&target.id, Status::LayerAlreadyExists);
            self.count(Placed::Skipped);
            return Ok(self.remote());
        }
        if self.upload.session().is_none() && target.mount(&holder, progress, cancel).await? {
            self.count(Placed::Mounted);
            return Ok(self.remote());
        }
        target.upload_from(self, progress, cancel).await?;
        self.count(Placed::Moved);
        Ok(self.remote())
    }
}

/// A copy may find the blob in the run's other target repositories of the
/// registry (asked all at once: on a first run into an empty registry
/// every answer is "no", and that should cost one round trip), or in the
/// source repository when it is on the same registry; it streams the bytes
/// from the source registry.
impl BlobOrigin for CopyBlob {
    async fn mount_candidates(&self, cancel: &CancellationToken) -> Result<Vec<String>> {
        let registry = self.to.registry();
        let others = self.placements.other_repositories(registry, self.to.name());
        let mut checks = Vec::new();
        for name in &others {
            let other = self.to.client().repository(registry, name)?;
            let digest = &self.digest;
            checks.push(async move { other.head_blob(digest).await });
        }
        let answers = or_cancelled(cancel, async {
            Ok::<_, crate::Error>(futures::future::join_all(checks).await)
        })
        .await??;
        let mut candidates: Vec<String> = others
            .into_iter()
            .zip(answers)
            .filter(|(_, has)| matches!(has, Ok(Some(_))))
            .map(|(name, _)| name)
            .collect();
        if self.from.registry() == self.to.registry() {
            candidates.push(self.from.name().to_string());
        }
        Ok(candidates)
    }

    fn source(&self) -> Result<Box<dyn BlobSource + Send + Sync>> {
        Ok(Box::new(RegistrySource {
            repo: self.from.clone(),
            digest: self.digest.clone(),
            size: self.size,
        }))
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
        let result = self.copy(&progress, &cancel).await;
        // Placed (or failed): the copies waiting for this one go on, and
        // find the blob's holder (or place it themselves).
        drop(lock(&self.claim).take());
        result.map_err(into_transfer_error)
    }

    fn set_remote_descriptor(&self, _descriptor: RemoteDescriptor) {}
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
