//! Pull-through: what the store does not hold is fetched from an upstream
//! registry through haul's registry client (auth, TLS, retries, the
//! config file's mirrors) and stored as it arrives.
//!
//! # Blobs: one fetch however many clients ask
//!
//! A missing blob is fetched by a transfer of a [`TransferManager`] keyed
//! by its digest, so clients asking for one blob at once share one
//! upstream `GET`. The transfer writes the bytes into the store's ingest
//! (a partial file under `ingest/`, committed into `content/blobs/` when
//! whole and verified) and publishes how many bytes are on disk as its
//! progress. Every client is a watcher of that transfer and streams the
//! partial file behind the writer ([`crate::follow`]): bytes reach clients
//! while they arrive, not after the blob completes. A connection the
//! upstream drops midway is reopened with `Range` from the byte reached by
//! the registry client; no client sees it. When every client has gone the
//! transfer is cancelled and the partial is kept for the next request to
//! resume.
//!
//! # Manifests
//!
//! By digest, a manifest is immutable: stored once, then served from the
//! store. By tag, the answer is kept for `tag_ttl`; after that the tag is
//! revalidated with a `HEAD` (the same digest: the cached bytes are served
//! again; another one: it is fetched).
//!
//! Blobs and manifests fetched this way are cached content, not images:
//! no reference names them, so `haul gc` removes them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use haul_oci::{Digest, Reference};
use haul_registry::{RegistryClient, Repository};
use haul_store::{IngestOutcome, Store};
use haul_xfer::{
    Counts, Progress, ProgressOutput, Status, TransferContext, TransferManager, Watcher,
};
use tokio::sync::watch;

use crate::error::{ApiError, ErrorCode};
use crate::metrics::Metrics;
use crate::names;
use crate::store_view::StoredManifest;

/// How `haul serve` fetches what it does not hold.
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    /// The client that reaches upstream registries.
    pub client: RegistryClient,
    /// The registries fetched from (`docker.io`, `registry.lan:5000`):
    /// the one `?ns=` names, else the first.
    pub registries: Vec<String>,
    /// How long a tag's manifest is served before it is revalidated.
    pub tag_ttl: Duration,
    /// Keep what is fetched in the store (`false`: a pure proxy; each blob
    /// lives in a temporary file while clients read it).
    pub store: bool,
}

/// The pull-through side of the server.
pub(crate) struct Upstream {
    client: RegistryClient,
    registries: Vec<String>,
    tag_ttl: Duration,
    keep: bool,
    manager: TransferManager<u64>,
    tags: Mutex<HashMap<String, CachedTag>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("registries", &self.registries)
            .field("tag_ttl", &self.tag_ttl)
            .finish()
    }
}

/// A tag's manifest, and when upstream last confirmed it.
#[derive(Debug, Clone)]
struct CachedTag {
    manifest: StoredManifest,
    checked: Instant,
}

/// How far a blob's transfer has written its partial file, as its
/// progress records say: `(bytes on disk, blob size)`.
pub(crate) type Seen = (u64, Option<u64>);

/// A watcher's progress output: keeps the latest counts.
struct SeenOutput(watch::Sender<Seen>);

impl ProgressOutput for SeenOutput {
    fn write(&self, progress: Progress) {
        if let Some(counts) = progress.counts() {
            self.0.send_replace((counts.current, counts.total));
        }
    }
}

/// A client's share of a blob transfer.
pub(crate) struct BlobFetch {
    /// The transfer; dropping it leaves (the last one leaving cancels it).
    pub(crate) watcher: Watcher<u64>,
    /// Its latest counts.
    pub(crate) seen: watch::Receiver<Seen>,
}

impl Upstream {
    pub(crate) fn new(options: UpstreamOptions) -> Self {
        Upstream {
            client: options.client,
            registries: options.registries,
            tag_ttl: options.tag_ttl,
            keep: options.store,
            manager: TransferManager::new(0),
            tags: Mutex::new(HashMap::new()),
        }
    }

    /// The upstream registry a request means: the one `ns` names when it
    /// is an upstream, the first without `ns`; `None` for another `ns`.
    pub(crate) fn registry_for(&self, ns: Option<&str>) -> Option<&str> {
        match ns {
            Some(ns) => self
                .registries
                .iter()
                .find(|r| r.as_str() == ns)
                .map(String::as_str),
            None => self.registries.first().map(String::as_str),
        }
    }

    fn repository(&self, registry: &str, name: &str) -> Result<Repository, ApiError> {
        let full =
            names::in_registry(registry, name).ok_or_else(|| ApiError::unknown_name(name))?;
        let reference = Reference::parse_raw(&full).map_err(|_| ApiError::unknown_name(name))?;
        self.client
            .repository_for(&reference)
            .map_err(|e| upstream_error(e, name, ""))
    }

    /// The manifest `reference` (tag or digest) of `name` upstream,
    /// stored by digest (and, by tag, kept for the TTL).
    pub(crate) async fn manifest(
        &self,
        store: &Store,
        metrics: &Metrics,
        registry: &str,
        name: &str,
        reference: &str,
    ) -> Result<StoredManifest, ApiError> {
        let repository = self.repository(registry, name)?;
        let by_tag = Digest::parse(reference).is_err();
        let key = format!("{}:{reference}", repository.name());
        let cached = if by_tag {
            self.tags
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
                .cloned()
        } else {
            None
        };
        if let Some(cached) = &cached {
            if cached.checked.elapsed() < self.tag_ttl {
                metrics.hit();
                return Ok(cached.manifest.clone());
            }
            // Stale: still the same digest upstream?
            match repository.head_manifest(reference).await {
                Ok(Some(info)) if info.digest == cached.manifest.digest => {
                    metrics.hit();
                    self.remember(&key, cached.manifest.clone());
                    return Ok(cached.manifest.clone());
                }
                Ok(_) => {}
                Err(e) => tracing::info!("revalidating {key}: {e}"),
            }
        }
        metrics.miss();
        let fetched = repository
            .get_manifest(reference)
            .await
            .map_err(|e| upstream_error(e, name, reference))?;
        let parsed =
            haul_oci::parse_manifest(fetched.bytes.to_vec(), fetched.media_type.as_deref())
                .map_err(|e| ApiError::internal(format!("manifest {reference} of {key}: {e}")))?;
        metrics.upstream(fetched.bytes.len() as u64);
        let manifest = StoredManifest {
            digest: fetched.digest.clone(),
            media_type: parsed.media_type().to_owned(),
            bytes: fetched.bytes.to_vec(),
        };
        if self.keep {
            let (to_store, digest) = (manifest.bytes.clone(), manifest.digest.clone());
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.put_blob_bytes(&to_store, &digest))
                .await
                .map_err(ApiError::internal)??;
        }
        if by_tag {
            self.remember(&key, manifest.clone());
        }
        Ok(manifest)
    }

    fn remember(&self, key: &str, manifest: StoredManifest) {
        self.tags.lock().unwrap_or_else(|e| e.into_inner()).insert(
            key.to_owned(),
            CachedTag {
                manifest,
                checked: Instant::now(),
            },
        );
    }

    /// The size of blob `digest` of `name` upstream (`HEAD`), fetching
    /// nothing.
    pub(crate) async fn blob_size(
        &self,
        registry: &str,
        name: &str,
        digest: &Digest,
    ) -> Result<u64, ApiError> {
        let repository = self.repository(registry, name)?;
        match repository.head_blob(digest).await {
            Ok(Some(size)) => Ok(size),
            Ok(None) => Err(ApiError::unknown_blob(digest.as_str())),
            Err(e) => Err(upstream_error(e, name, digest.as_str())),
        }
    }

    /// Joins (or starts) the transfer of blob `digest` from `name`
    /// upstream into `store`.
    pub(crate) async fn fetch_blob(
        &self,
        store: &Store,
        metrics: &Arc<Metrics>,
        registry: &str,
        name: &str,
        digest: &Digest,
    ) -> Result<BlobFetch, ApiError> {
        let repository = self.repository(registry, name)?;
        let (sender, seen) = watch::channel((0, None));
        let output: Arc<dyn ProgressOutput> = Arc::new(SeenOutput(sender));
        let keep = self.keep;
        let temp = self.temp_path(store, digest);
        let work = {
            let (store, metrics, digest) = (store.clone(), Arc::clone(metrics), digest.clone());
            move |ctx: TransferContext| async move {
                if keep {
                    fetch_into_store(ctx, repository, store, metrics, digest).await
                } else {
                    fetch_into_temp(ctx, repository, store, metrics, digest, temp).await
                }
            }
        };
        let watcher = self
            .manager
            .transfer(digest.to_string(), work, output)
            .await;
        Ok(BlobFetch { watcher, seen })
    }
}

impl Upstream {
    /// Where a follower reads blob `digest` while it is fetched, and where
    /// it is once complete (`None`: nowhere, nothing is kept).
    pub(crate) fn follow_paths(
        &self,
        store: &Store,
        digest: &Digest,
    ) -> (std::path::PathBuf, Option<std::path::PathBuf>) {
        if self.keep {
            (
                store.ingest_partial_path(digest),
                Some(store.blob_path(digest)),
            )
        } else {
            (self.temp_path(store, digest), None)
        }
    }

    /// The temporary file of a blob proxied without keeping it, under
    /// `ROOT/tmp/` (which gc empties of leftovers).
    fn temp_path(&self, store: &Store, digest: &Digest) -> std::path::PathBuf {
        store.root().join("tmp").join(format!(
            "haul-serve-{}-{}-{}.partial",
            std::process::id(),
            digest.algorithm(),
            digest.hex()
        ))
    }
}

/// The work of a blob transfer without a store: the blob goes into a
/// temporary file, hashed as it is written, which stays while any client
/// still reads it (the transfer ends when its last watcher leaves) and is
/// deleted then.
async fn fetch_into_temp(
    ctx: TransferContext,
    repository: Repository,
    store: Store,
    metrics: Arc<Metrics>,
    digest: Digest,
    path: std::path::PathBuf,
) -> Result<u64, haul_xfer::Error> {
    ctx.acquire_slot().await?;
    metrics.miss();
    metrics.transfer_delta(true);
    let _gauge = Gauge(Arc::clone(&metrics));
    let size = match repository.head_blob(&digest).await {
        Ok(Some(size)) => size,
        Ok(None) => {
            return Err(haul_xfer::Error::do_not_retry(format!(
                "blob {digest} not found upstream in {}",
                repository.name()
            )))
        }
        Err(e) => return Err(haul_xfer::Error::failed(e)),
    };
    let lease = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.lease())
            .await
            .map_err(|_| haul_xfer::Error::Aborted)?
            .map_err(haul_xfer::Error::do_not_retry)?
    };
    let io_error = |e: std::io::Error| haul_xfer::Error::do_not_retry(e);
    let mut file = std::fs::File::create(&path).map_err(io_error)?;
    let _remove = RemoveOnDrop(path);
    let id = digest.to_string();
    let progress = ctx.progress();
    progress.status(&id, Status::Downloading(Counts::of(0, size)));
    let mut digester = haul_oci::Digester::new(digest.algorithm());
    let mut stream = repository.blob_stream_unverified(&digest, Some(size), 0);
    let mut written = 0;
    while written < size {
        let next = tokio::select! {
            biased;
            chunk = stream.next() => chunk,
            () = ctx.cancelled() => return Err(haul_xfer::Error::Cancelled),
        };
        match next {
            None => break,
            Some(Err(e)) => return Err(haul_xfer::Error::failed(e)),
            Some(Ok(bytes)) => {
                digester.update(&bytes);
                std::io::Write::write_all(&mut file, &bytes).map_err(io_error)?;
                written += bytes.len() as u64;
                metrics.upstream(bytes.len() as u64);
                progress.status(&id, Status::Downloading(Counts::of(written, size)));
            }
        }
    }
    let actual = digester.finish();
    if actual != digest || written != size {
        return Err(haul_xfer::Error::do_not_retry(format!(
            "blob {digest} from upstream: {written} bytes hashing to {actual}"
        )));
    }
    // The last record carries the counts: watchers follow the file by them
    // (a status without counts after it could hide the final count from a
    // watcher that skipped it).
    progress.status(&id, Status::Downloading(Counts::of(size, size)));
    // The file stays while a client reads it.
    ctx.cancelled().await;
    drop(lease);
    Ok(size)
}

/// Deletes a file when dropped.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The work of a blob transfer: upstream `GET` (resumed with `Range` from
/// the partial already on disk, and after dropped connections) into the
/// store's ingest, flushed chunk by chunk so that followers read it,
/// committed when whole. Returns the blob's size.
async fn fetch_into_store(
    ctx: TransferContext,
    repository: Repository,
    store: Store,
    metrics: Arc<Metrics>,
    digest: Digest,
) -> Result<u64, haul_xfer::Error> {
    ctx.acquire_slot().await?;
    metrics.miss();
    metrics.transfer_delta(true);
    let _gauge = Gauge(Arc::clone(&metrics));
    let size = match repository.head_blob(&digest).await {
        Ok(Some(size)) => size,
        Ok(None) => {
            return Err(haul_xfer::Error::do_not_retry(format!(
                "blob {digest} not found upstream in {}",
                repository.name()
            )))
        }
        Err(e) => return Err(haul_xfer::Error::failed(e)),
    };
    let handle = tokio::runtime::Handle::current();
    let cancel = ctx.cancellation_token().clone();
    let progress = ctx.progress();
    let id = digest.to_string();
    tokio::task::spawn_blocking(move || -> Result<u64, haul_xfer::Error> {
        let store_error = |e: haul_store::Error| haul_xfer::Error::do_not_retry(e);
        let mut writer = match store.ingest(&digest).map_err(store_error)? {
            IngestOutcome::Present { size } => {
                progress.status(&id, Status::Downloading(Counts::of(size, size)));
                return Ok(size);
            }
            IngestOutcome::Writer(writer) => writer,
        };
        progress.status(&id, Status::Downloading(Counts::of(writer.offset(), size)));
        let mut stream = repository.blob_stream_unverified(&digest, Some(size), writer.offset());
        // Once every byte is on disk the blob is committed, even if the
        // last client has already read it all and gone.
        while writer.offset() < size {
            let next = handle.block_on(async {
                tokio::select! {
                    biased;
                    chunk = stream.next() => Some(chunk),
                    () = cancel.cancelled() => None,
                }
            });
            match next {
                None => return Err(haul_xfer::Error::Cancelled),
                Some(None) => break,
                Some(Some(Err(e))) => return Err(haul_xfer::Error::failed(e)),
                Some(Some(Ok(bytes))) => {
                    writer.write_all(&bytes).map_err(store_error)?;
                    writer.flush().map_err(store_error)?;
                    metrics.upstream(bytes.len() as u64);
                    progress.status(&id, Status::Downloading(Counts::of(writer.offset(), size)));
                }
            }
        }
        writer.commit(size, &digest).map_err(store_error)?;
        progress.status(&id, Status::Downloading(Counts::of(size, size)));
        Ok(size)
    })
    .await
    .map_err(|_| haul_xfer::Error::Aborted)?
}

/// Keeps the in-flight transfers gauge up while alive.
struct Gauge(Arc<Metrics>);

impl Drop for Gauge {
    fn drop(&mut self) {
        self.0.transfer_delta(false);
    }
}

/// An upstream failure as the client should see it.
fn upstream_error(err: haul_registry::Error, name: &str, reference: &str) -> ApiError {
    match err {
        haul_registry::Error::ManifestNotFound { .. } => {
            ApiError::unknown_manifest(name, reference)
        }
        haul_registry::Error::BlobNotFound { .. } => ApiError::unknown_blob(reference),
        haul_registry::Error::RepositoryNotFound { .. } => ApiError::unknown_name(name),
        other => {
            tracing::warn!("upstream: {other}");
            ApiError::new(ErrorCode::Unknown, format!("upstream: {other}"))
                .with_status(axum::http::StatusCode::BAD_GATEWAY)
        }
    }
}
