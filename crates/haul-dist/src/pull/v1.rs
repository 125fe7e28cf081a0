//! `pull` over the legacy v1 protocol, through the download manager.
//!
//! The index gives a token and endpoints; on the first endpoint that
//! answers, the tag names an image, `ancestry` its chain (root last), and
//! each image's JSON its layer size. Each layer is a descriptor of the
//! download manager keyed `"v1:" + ID`: a layer this store knows under that
//! ID on this registry (recorded by an earlier v1 push or pull, see
//! [`haul_store::V1Layer`]) is "Already exists"; the others are downloaded
//! into a partial file that survives failed attempts and runs (resumed with
//! a closed `Range`, as the Python registry needs; a registry that ignores
//! `Range` starts the layer over), checked against the payload checksum the
//! registry gives, put into the content store by digest and unpacked (which
//! computes the diffID). The image config is then synthesised as Docker's
//! `MakeConfigFromV1Config` did (the top image's JSON without the v1
//! fields, with `rootfs` and a `history` from the chain), wrapped in a
//! Docker schema 2 manifest over the stored blobs, stored and tagged.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use haul_oci::{media_type, parse_image_config, Compression, Digest, Digester, Reference};
use haul_registry::v1::{remote_name, Url, V1Session};
use haul_registry::RegistryClient;
use haul_store::{ImageRecord, IngestOutcome, Store, UnpackOptions, V1Layer};
use haul_xfer::{
    short_id, Counts, DiffId, DownloadDescriptor, DownloadManager, Message, ProgressOutput, Status,
};
use serde_json::{json, Map, Value};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::error::into_transfer_error;
use crate::error::{Error, Result};
use crate::pull::layer_fetch::{stage_from_store, LayerBlobInfo};
use crate::pull::store_layers::{PulledLayer, SharedLayers, StoreLayers};
use crate::pull::{PullReport, PullSettings};
use crate::task::blocking;

/// Consecutive failed reads of one layer resumed within one attempt.
const RESUMES_PER_ATTEMPT: u32 = 5;

/// Pulls images with the v1 protocol. One `V1Puller` shares its transfers
/// between the pulls it runs.
pub struct V1Puller {
    client: RegistryClient,
    store: Store,
    layers: SharedLayers,
    downloads: DownloadManager<StoreLayers>,
}

impl V1Puller {
    /// A puller writing into `store`. v1 layers are always unpacked: their
    /// diffIDs are known only that way.
    pub fn new(client: RegistryClient, store: Store, settings: &PullSettings) -> Self {
        let (layers, downloads) =
            crate::pull::layer_downloads(&store, Some(UnpackOptions::default()), settings);
        Self {
            client,
            store,
            layers,
            downloads,
        }
    }

    /// Pulls `reference` (a tag; v1 knows no digests).
    pub async fn pull(
        &self,
        reference: &Reference,
        output: Arc<dyn ProgressOutput>,
        cancel: CancellationToken,
    ) -> Result<PullReport> {
        if reference.tag().is_none() && reference.digest().is_some() {
            return Err(Error::Unsupported {
                reference: reference.to_string(),
                message: "the v1 protocol cannot pull by digest".into(),
            });
        }
        let tag = reference.tag().unwrap_or("latest").to_string();
        let registry = self.client.v1(reference.registry())?;
        let remote = remote_name(reference.repository());
        output.message(
            "",
            Message::PullingRepository {
                repository: reference.name().to_string(),
            },
        );
        let session = registry.pull_index(&remote).await?;

        let store = self.store.clone();
        let _lease = blocking(move || Ok(store.lease()?)).await?;
        let previous = {
            let store = self.store.clone();
            let reference = reference.clone();
            blocking(move || Ok(store.resolve(&reference)?)).await?
        };

        // The first endpoint that knows the tag and the chain serves it all.
        let mut last_error = None;
        let mut found = None;
        for endpoint in session.endpoints() {
            match self
                .chain(&session, endpoint, &tag, reference, &output)
                .await
            {
                Ok(chain) => {
                    found = Some((endpoint.clone(), chain));
                    break;
                }
                Err(e) => {
                    tracing::debug!("endpoint {endpoint} cannot serve {reference}: {e}");
                    last_error = Some(e);
                }
            }
        }
        let (endpoint, chain) = match found {
            Some(f) => f,
            None => {
                return Err(last_error.unwrap_or_else(|| Error::Protocol {
                    registry: reference.registry().to_string(),
                    message: format!("the index gave no endpoint for {reference}"),
                }))
            }
        };

        let transferred = Arc::new(AtomicU64::new(0));
        let mut descriptors = Vec::with_capacity(chain.len());
        for (id, json) in &chain {
            let known = {
                let store = self.store.clone();
                let (name, id) = (registry.name().to_string(), id.clone());
                blocking(move || Ok(store.v1_layer(&name, &id)?)).await?
            };
            descriptors.push(Arc::new(V1PullLayer {
                session: session.clone(),
                endpoint: endpoint.clone(),
                id: id.clone(),
                json: json.bytes.clone(),
                size: json.layer_size,
                checksum: json.checksum.clone(),
                store: self.store.clone(),
                layers: Arc::clone(&self.layers),
                known,
                blob: Mutex::new(None),
                transferred: Arc::clone(&transferred),
            }));
        }
        let (diff_ids, release) = self
            .downloads
            .download(&cancel, &descriptors, Arc::clone(&output))
            .await?;
        let result = self
            .record(reference, &registry, &chain, &descriptors, &diff_ids)
            .await;
        release.release().await;
        let (record, manifest_digest) = result?;

        let target = record.target();
        let up_to_date = previous.is_some_and(|p| p.target() == target)
            && transferred.load(Ordering::Relaxed) == 0;
        {
            let store = self.store.clone();
            let reference = reference.clone();
            blocking(move || Ok(store.tag(&reference, &target).map(|_| ())?)).await?;
        }
        output.message(
            "",
            Message::PullFinished {
                reference: reference.familiar(),
                up_to_date,
            },
        );
        Ok(PullReport {
            reference: reference.clone(),
            digest: manifest_digest,
            images: vec![record],
            up_to_date,
            transferred: transferred.load(Ordering::Relaxed),
            warnings: Vec::new(),
            referrers: Vec::new(),
            digest_tags: Vec::new(),
        })
    }

    /// The tag's image, its ancestry (root first) and every image's JSON.
    async fn chain(
        &self,
        session: &V1Session,
        endpoint: &Url,
        tag: &str,
        reference: &Reference,
        output: &Arc<dyn ProgressOutput>,
    ) -> Result<Vec<(String, haul_registry::v1::ImageJson)>> {
        let id = session.tag(endpoint, tag).await?;
        let short = short_id(&id).to_string();
        output.status(
            &short,
            Status::PullingImage {
                tag: tag.to_string(),
                repository: reference.name().to_string(),
            },
        );
        let ancestry = session.ancestry(endpoint, &id).await?;
        output.status(&short, Status::PullingDependentLayers);
        let mut chain = Vec::with_capacity(ancestry.len());
        for layer_id in ancestry.iter().rev() {
            output.status(short_id(layer_id), Status::PullingMetadata);
            let json = session.image_json(endpoint, layer_id).await?;
            chain.push((layer_id.clone(), json));
        }
        Ok(chain)
    }

    /// Stores the config and manifest of the pulled chain and the image
    /// record; remembers every layer's v1 ID.
    async fn record(
        &self,
        reference: &Reference,
        registry: &haul_registry::v1::V1Registry,
        chain: &[(String, haul_registry::v1::ImageJson)],
        descriptors: &[Arc<V1PullLayer>],
        diff_ids: &[DiffId],
    ) -> Result<(ImageRecord, Digest)> {
        let inconsistent = |message: String| Error::Inconsistent {
            reference: reference.to_string(),
            message,
        };
        if diff_ids.len() != chain.len() {
            return Err(inconsistent(format!(
                "{} layers registered for {} v1 images",
                diff_ids.len(),
                chain.len()
            )));
        }
        let diff_ids: Vec<Digest> = diff_ids
            .iter()
            .map(|d| Digest::parse(d.as_str()))
            .collect::<std::result::Result<_, _>>()?;
        let mut layers = Vec::with_capacity(chain.len());
        for (descriptor, diff_id) in descriptors.iter().zip(&diff_ids) {
            let blob = descriptor.blob().ok_or_else(|| {
                inconsistent(format!("no blob is known for v1 image {}", descriptor.id))
            })?;
            let store = self.store.clone();
            let (name, id, layer) = (
                registry.name().to_string(),
                descriptor.id.clone(),
                V1Layer {
                    diff_id: diff_id.clone(),
                    blob: blob.0.clone(),
                    size: blob.1,
                },
            );
            let media = blocking(move || {
                store.set_v1_layer(&name, &id, &layer)?;
                Ok(layer_media_type(&store, &layer.blob))
            })
            .await?;
            layers.push((blob.0, blob.1, media));
        }
        let jsons: Vec<&[u8]> = chain.iter().map(|(_, j)| &j.bytes[..]).collect();
        let config_bytes = config_from_v1(&jsons, &diff_ids).map_err(|e| {
            inconsistent(format!(
                "cannot build an image config from the v1 JSON: {e}"
            ))
        })?;
        let config = parse_image_config(config_bytes.clone())?;
        let manifest_bytes = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": media_type::DOCKER_MANIFEST,
            "config": {
                "mediaType": media_type::DOCKER_CONFIG,
                "size": config_bytes.len(),
                "digest": config.digest().to_string(),
            },
            "layers": layers.iter().map(|(digest, size, media)| json!({
                "mediaType": media,
                "size": size,
                "digest": digest.to_string(),
            })).collect::<Vec<_>>(),
        }))
        .map_err(|e| Error::Internal(e.to_string()))?;
        let manifest_digest = Digest::sha256_of(&manifest_bytes);
        let manifest = haul_oci::parse_manifest(manifest_bytes.clone(), None)?;
        let record = ImageRecord::from_parts(&manifest, &config)?;
        let store = self.store.clone();
        let to_put = record.clone();
        let source = format!("{}/{}", reference.registry(), reference.repository());
        let config_digest = config.digest().clone();
        let md = manifest_digest.clone();
        blocking(move || {
            if !store.has_blob(&config_digest) {
                store.put_blob_bytes(&config_bytes, &config_digest)?;
            }
            if !store.has_blob(&md) {
                store.put_blob_bytes(&manifest_bytes, &md)?;
            }
            crate::pull::record_image(&store, &to_put, &source)
        })
        .await?;
        Ok((record, manifest_digest))
    }
}

/// The media type of a stored layer blob, from its first bytes (gzip
/// unless the blob says otherwise or is absent).
fn layer_media_type(store: &Store, blob: &Digest) -> &'static str {
    let mut head = [0u8; 4];
    let n = store
        .open_blob(blob)
        .ok()
        .and_then(|mut f| f.read(&mut head).ok())
        .unwrap_or(0);
    match haul_store::detect_compression(&head[..n]) {
        Some(Compression::Uncompressed) if n > 0 => media_type::DOCKER_LAYER,
        Some(Compression::Zstd) => media_type::DOCKER_LAYER_ZSTD,
        _ => media_type::DOCKER_LAYER_GZIP,
    }
}

/// The config of a v1 chain (root first), as for schema 1 manifests.
fn config_from_v1(chain: &[&[u8]], diff_ids: &[Digest]) -> std::result::Result<Vec<u8>, String> {
    let history = chain
        .iter()
        .map(|raw| serde_json::from_slice::<Map<String, Value>>(raw).map(|m| (m, false)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    crate::pull::schema1::config_from_v1_chain(&history, diff_ids).map_err(|e| e.to_string())
}

/// One v1 image's layer, as the download manager sees it.
struct V1PullLayer {
    session: V1Session,
    endpoint: Url,
    id: String,
    json: Bytes,
    size: Option<u64>,
    /// The payload checksum the registry gave, if any.
    checksum: Option<String>,
    store: Store,
    layers: SharedLayers,
    /// What an earlier push or pull recorded for this ID on this registry.
    known: Option<V1Layer>,
    /// The blob (digest, size) once downloaded.
    blob: Mutex<Option<(Digest, u64)>>,
    transferred: Arc<AtomicU64>,
}

impl V1PullLayer {
    fn short(&self) -> String {
        short_id(&self.id).to_string()
    }

    fn registry(&self) -> &str {
        self.session.registry().name()
    }

    /// The layer's blob: downloaded now, or known from before.
    fn blob(&self) -> Option<(Digest, u64)> {
        lock(&self.blob)
            .clone()
            .or_else(|| self.known.as_ref().map(|k| (k.blob.clone(), k.size)))
    }

    async fn fetch(
        &self,
        cancel: &CancellationToken,
        progress: &Arc<dyn ProgressOutput>,
    ) -> Result<Digest> {
        let id = self.short();
        let path = {
            let store = self.store.clone();
            let (name, v1) = (self.registry().to_string(), self.id.clone());
            blocking(move || Ok(store.v1_partial_path(&name, &v1)?)).await?
        };
        let io = |source: std::io::Error| Error::Io {
            path: path.clone(),
            source,
        };
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await
            .map_err(io)?;
        let mut present = file.metadata().await.map_err(io)?.len();
        if self.size.is_some_and(|s| present > s) {
            file.set_len(0).await.map_err(io)?;
            present = 0;
        }
        let total = self.size.unwrap_or(0);
        let mut failures = 0;
        loop {
            if self.size.is_some_and(|s| present == s) {
                break;
            }
            let opened = self
                .session
                .open_layer(&self.endpoint, &self.id, present, self.size)
                .await;
            let mut body = match opened {
                Ok(b) => b,
                Err(e) if e.is_retryable() && failures + 1 < RESUMES_PER_ATTEMPT => {
                    failures += 1;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if body.start != present {
                // The registry ignored the range: start the layer over.
                tracing::debug!("v1 layer {}: range ignored, starting over", self.id);
                file.set_len(0).await.map_err(io)?;
                present = 0;
            }
            let mut broke = None;
            loop {
                let next = tokio::select! {
                    _ = cancel.cancelled() => return Err(Error::Cancelled),
                    next = body.stream.next() => next,
                };
                match next {
                    None => break,
                    Some(Ok(chunk)) => {
                        file.write_all(&chunk).await.map_err(io)?;
                        present += chunk.len() as u64;
                        self.transferred
                            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        progress.status(&id, Status::Downloading(Counts::of(present, total)));
                        failures = 0;
                    }
                    Some(Err(e)) => {
                        broke = Some(e);
                        break;
                    }
                }
            }
            file.flush().await.map_err(io)?;
            match broke {
                None if self.size.is_none_or(|s| present == s) => break,
                None => {
                    // A short body (the Python registry closes connections):
                    // resume from what arrived.
                    failures += 1;
                    if failures >= RESUMES_PER_ATTEMPT {
                        return Err(Error::Registry(haul_registry::Error::Transport {
                            registry: self.registry().to_string(),
                            message: format!(
                                "layer of {} ended at byte {present} of {total}",
                                self.id
                            ),
                            retryable: true,
                        }));
                    }
                }
                Some(e) if e.is_retryable() && failures + 1 < RESUMES_PER_ATTEMPT => {
                    failures += 1;
                    tracing::debug!("v1 layer {}: {e}; resuming from byte {present}", self.id);
                }
                Some(e) => return Err(e.into()),
            }
        }
        file.sync_all().await.map_err(io)?;
        drop(file);
        progress.status(&id, Status::VerifyingChecksum);

        // Hash the whole file (payload checksum too), then put it into the
        // content store by digest.
        let store = self.store.clone();
        let json = self.json.clone();
        let expected = self.checksum.clone().filter(|c| c.starts_with("sha256:"));
        let (name, v1) = (self.registry().to_string(), self.id.clone());
        let path2 = path.clone();
        let digest = blocking(move || {
            let io = |source: std::io::Error| Error::Io {
                path: path2.clone(),
                source,
            };
            let mut digester = Digester::sha256();
            let mut payload = haul_registry::v1::checksum::PayloadChecksum::new(&json);
            let mut f = std::fs::File::open(&path2).map_err(io)?;
            let mut buf = vec![0u8; 256 * 1024];
            let mut size = 0u64;
            loop {
                let n = f.read(&mut buf).map_err(io)?;
                if n == 0 {
                    break;
                }
                digester.update(&buf[..n]);
                payload.update(&buf[..n]);
                size += n as u64;
            }
            let digest = digester.finish();
            let payload = payload.finish();
            if let Some(expected) = expected {
                if expected != payload {
                    store.remove_v1_partial(&name, &v1)?;
                    return Err(Error::Registry(haul_registry::Error::DigestMismatch {
                        what: format!("layer of v1 image {v1} (payload checksum)"),
                        expected,
                        actual: payload,
                    }));
                }
            }
            if let IngestOutcome::Writer(mut ingest) = store.ingest(&digest)? {
                if ingest.offset() > 0 {
                    ingest.reset()?;
                }
                let mut f = std::fs::File::open(&path2).map_err(io)?;
                loop {
                    let n = f.read(&mut buf).map_err(io)?;
                    if n == 0 {
                        break;
                    }
                    ingest.write_all(&buf[..n])?;
                }
                ingest.commit(size, &digest)?;
            }
            Ok((digest, size))
        })
        .await?;
        *lock(&self.blob) = Some(digest.clone());
        Ok(digest.0)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl DownloadDescriptor for V1PullLayer {
    type Blob = PulledLayer;

    fn key(&self) -> String {
        format!("v1:{}", self.id)
    }

    fn id(&self) -> String {
        self.short()
    }

    fn diff_id(&self) -> Option<DiffId> {
        self.known
            .as_ref()
            .map(|k| DiffId::new(k.diff_id.to_string()))
    }

    async fn download(
        &self,
        cancel: CancellationToken,
        progress: Arc<dyn ProgressOutput>,
    ) -> Result<PulledLayer, haul_xfer::Error> {
        let digest = self
            .fetch(&cancel, &progress)
            .await
            .map_err(into_transfer_error)?;
        let size = self.blob().map(|b| b.1).unwrap_or(0);
        progress.status(&self.short(), Status::DownloadComplete);
        let info = LayerBlobInfo {
            digest: digest.clone(),
            size,
            compression: None,
        };
        let options = self.layers.unpack_options().cloned().unwrap_or_default();
        let staged = stage_from_store(&self.store, &info, None, options)
            .await
            .map_err(into_transfer_error)?;
        let (store, name, v1) = (
            self.store.clone(),
            self.registry().to_string(),
            self.id.clone(),
        );
        let _ = blocking(move || Ok(store.remove_v1_partial(&name, &v1)?)).await;
        Ok(PulledLayer::Staged {
            staged,
            blob: digest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_the_top_json_without_v1_fields_with_rootfs_and_history() {
        let root = br##"{"id":"aa","created":"2015-01-01T00:00:00Z","container_config":{"Cmd":["/bin/sh","-c","#(nop) ADD x"]}}"##;
        let top = br#"{"id":"bb","parent":"aa","Size":5,"architecture":"arm64","os":"linux","config":{"Env":["A=1"]},"created":"2015-01-02T00:00:00Z"}"#;
        let diffs = [Digest::sha256_of(b"1"), Digest::sha256_of(b"2")];
        let bytes = config_from_v1(&[root, top], &diffs).unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert!(v.get("id").is_none() && v.get("parent").is_none() && v.get("Size").is_none());
        assert_eq!(v["architecture"], "arm64");
        assert_eq!(v["config"]["Env"][0], "A=1");
        assert_eq!(v["rootfs"]["diff_ids"][1], diffs[1].to_string());
        assert_eq!(v["history"][0]["created_by"], "/bin/sh -c #(nop) ADD x");
        assert_eq!(v["history"][1]["created"], "2015-01-02T00:00:00Z");
        let parsed = parse_image_config(bytes).unwrap();
        assert_eq!(parsed.diff_ids(), &diffs);
    }
}
