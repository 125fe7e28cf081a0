//! `push` over the legacy v1 protocol, as Docker 1.10's v1 pusher did it.
//!
//! The local image becomes a list of v1 images, one per layer: the layers
//! below the top one become *dependency images* keyed by their chain ID
//! (hex) with the config `{"id":..,"parent":..}`; the top layer becomes the
//! *top image*, keyed by the image ID (config digest hex), with the image
//! config converted to a v1 config (`rootfs`, `history`, `os.version` and
//! `os.features` removed, `id` and `parent` added). Then:
//!
//! 1. "Sending image list": `PUT` of the image list on the index, which
//!    gives a token and the endpoints;
//! 2. "Pushing repository NAME", and on each endpoint: a lookup of every
//!    image by up to 5 workers at once ("Image ID already pushed,
//!    skipping" for those present); then, in ancestry order (a registry
//!    refuses a child before its parent's JSON), each missing image: JSON,
//!    layer (the stored blob, streamed, "Pushing" with byte counts),
//!    checksum ("Image successfully pushed"); each attempt is retried as
//!    the v2 upload manager retries ("Retrying in N seconds"); then the tag
//!    ("Pushing tag for rev [ID] on {URL}");
//! 3. the validating `PUT .../images` on the index (204).
//!
//! Every image pushed or found is recorded in the store's v1 metadata
//! ([`haul_store::V1Layer`]), so a later v1 pull from that registry knows
//! the layer is present.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use haul_oci::Reference;
use haul_registry::v1::checksum::{tarsum_v0, PayloadChecksum};
use haul_registry::v1::{remote_name, IndexEntry, PutOutcome, Url, V1Session};
use haul_registry::RegistryClient;
use haul_store::{ImageLayer, Store, V1Layer};
use haul_xfer::{short_id, Counts, Message, Operation, ProgressOutput, RetryPolicy, Status};
use tokio_util::sync::CancellationToken;

use crate::error::{into_transfer_error, Error, Result};
use crate::push::PushSettings;
use crate::task::blocking;

/// Image lookups running at once on an endpoint (as Docker).
const LOOKUP_WORKERS: usize = 5;
/// Largest config read into memory.
const CONFIG_LIMIT: u64 = 8 * 1024 * 1024;

/// What a v1 push did.
#[derive(Debug, Clone, Default)]
pub struct V1PushReport {
    /// v1 IDs of the images sent (on any endpoint), root first.
    pub pushed: Vec<String>,
    /// v1 IDs of the images an endpoint already had.
    pub skipped: Vec<String>,
    /// The v1 ID of the top image (what the tag names).
    pub top_id: String,
    /// The endpoints used.
    pub endpoints: Vec<String>,
}

/// One image of the v1 list.
#[derive(Debug, Clone)]
struct V1Image {
    id: String,
    json: Bytes,
    layer: ImageLayer,
    top: bool,
}

impl V1Image {
    fn short(&self) -> String {
        short_id(&self.id).to_string()
    }
}

/// Pushes local images with the v1 protocol.
pub struct V1Pusher {
    client: RegistryClient,
    store: Store,
    retry: RetryPolicy,
    /// Whether to send tarsum v0 (`X-Docker-Checksum`) besides the payload
    /// checksum. Neither reference server checks it; registry 0.6/0.7 did.
    send_tarsum: bool,
}

impl V1Pusher {
    /// A pusher reading from `store`.
    pub fn new(client: RegistryClient, store: Store, settings: &PushSettings) -> Self {
        Self {
            client,
            store,
            retry: RetryPolicy::default().with_tick(settings.retry_tick),
            send_tarsum: true,
        }
    }

    /// Sends (or not) tarsum v0 with each checksum (default: sent).
    pub fn with_tarsum(mut self, send: bool) -> Self {
        self.send_tarsum = send;
        self
    }

    /// Pushes the local image `reference` names to that reference's
    /// registry with the v1 protocol.
    pub async fn push(
        &self,
        reference: &Reference,
        output: Arc<dyn ProgressOutput>,
        cancel: CancellationToken,
    ) -> Result<V1PushReport> {
        let image = {
            let store = self.store.clone();
            let r = reference.clone();
            blocking(move || Ok(store.resolve(&r)?)).await?
        }
        .ok_or_else(|| Error::NoSuchImage(reference.familiar()))?
        .image;
        if reference.tag().is_none() && reference.digest().is_some() {
            return Err(Error::Unsupported {
                reference: reference.to_string(),
                message: "the v1 protocol cannot push by digest".into(),
            });
        }
        let tag = reference.tag().unwrap_or("latest").to_string();
        let config = {
            let store = self.store.clone();
            let id = image.id.clone();
            blocking(move || Ok(store.read_blob_limited(&id, CONFIG_LIMIT)?)).await?
        };
        let images = v1_images(&image.layers, &config, image.id.hex()).map_err(|message| {
            Error::Unsupported {
                reference: reference.to_string(),
                message,
            }
        })?;
        for img in &images {
            if !self.store.has_blob(&img.layer.digest) {
                return Err(Error::Inconsistent {
                    reference: reference.to_string(),
                    message: format!(
                        "layer {} is not in the local store (a store written by an older haul kept only the unpacked layer; pull the image again)",
                        img.layer.digest
                    ),
                });
            }
        }
        let top_id = images.last().map(|i| i.id.clone()).unwrap_or_default();

        let registry = self.client.v1(reference.registry())?;
        let remote = remote_name(reference.repository());
        output.message(
            "",
            Message::V1PushRefersTo {
                repository: reference.name().to_string(),
            },
        );
        output.message("", Message::SendingImageList);
        let entries: Vec<IndexEntry> = images
            .iter()
            .map(|i| IndexEntry {
                id: i.id.clone(),
                tag: i.top.then(|| tag.clone()),
                checksum: None,
            })
            .collect();
        let session = registry.push_index(&remote, &entries).await?;
        output.message(
            "",
            Message::PushingRepository {
                repository: reference.name().to_string(),
            },
        );

        let mut report = V1PushReport {
            top_id,
            endpoints: session.endpoints().iter().map(Url::to_string).collect(),
            ..V1PushReport::default()
        };
        for endpoint in session.endpoints() {
            let present = self.lookup(&session, endpoint, &images, &output).await?;
            for img in &images {
                if cancel.is_cancelled() {
                    return Err(Error::Cancelled);
                }
                if present.contains(&img.id) {
                    report.skipped.push(img.id.clone());
                    self.remember(registry.name(), img).await;
                } else {
                    let sent = self
                        .push_image_with_retries(&session, endpoint, img, &output, &cancel)
                        .await?;
                    if sent {
                        report.pushed.push(img.id.clone());
                    } else {
                        report.skipped.push(img.id.clone());
                    }
                }
                if img.top {
                    output.message(
                        "",
                        Message::PushingTag {
                            image: img.short().to_string(),
                            url: format!("{endpoint}repositories/{remote}/tags/{tag}"),
                        },
                    );
                    session.put_tag(endpoint, &tag, &img.id).await?;
                }
            }
        }
        session.validate(&[]).await?;
        Ok(report)
    }

    /// Which images `endpoint` already has, asked by a few workers at once.
    async fn lookup(
        &self,
        session: &V1Session,
        endpoint: &Url,
        images: &[V1Image],
        output: &Arc<dyn ProgressOutput>,
    ) -> Result<HashSet<String>> {
        let workers = images.len().clamp(1, LOOKUP_WORKERS);
        // Owned ids, so that the lookups' futures borrow nothing of the
        // closure (a borrowing one is not provably `Send`).
        let ids: Vec<(String, String)> = images
            .iter()
            .map(|img| (img.id.clone(), img.short().to_string()))
            .collect();
        let found: Vec<Option<String>> = futures::stream::iter(ids)
            .map(|(id, short)| async move {
                let exists = session.image_exists(endpoint, &id).await?;
                if exists {
                    output.message("", Message::V1ImageAlreadyPushed { image: short });
                }
                Ok::<_, Error>(exists.then_some(id))
            })
            .buffer_unordered(workers)
            .try_collect()
            .await?;
        Ok(found.into_iter().flatten().collect())
    }

    /// Pushes one image, retrying failed attempts with the countdown the
    /// upload manager shows. `Ok(false)`: the registry had it after all.
    async fn push_image_with_retries(
        &self,
        session: &V1Session,
        endpoint: &Url,
        img: &V1Image,
        output: &Arc<dyn ProgressOutput>,
        cancel: &CancellationToken,
    ) -> Result<bool> {
        let id = img.short();
        let attempts = self
            .retry
            .run(Operation::Upload, &id, cancel, output.as_ref(), || async {
                // Dropping the push on cancellation stops the upload at once.
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => Err(haul_xfer::Error::Cancelled),
                    pushed = self.push_image(session, endpoint, img, output) => {
                        pushed.map_err(into_transfer_error)
                    }
                }
            })
            .await;
        match attempts {
            Ok(sent) => Ok(sent),
            Err(haul_xfer::Error::Cancelled | haul_xfer::Error::CancelledDuringRetryDelay(_)) => {
                Err(Error::Cancelled)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn push_image(
        &self,
        session: &V1Session,
        endpoint: &Url,
        img: &V1Image,
        output: &Arc<dyn ProgressOutput>,
    ) -> Result<bool> {
        let id = img.short();
        output.status(&id, Status::PushingImage);
        if session
            .put_image_json(endpoint, &img.id, img.json.clone())
            .await?
            == PutOutcome::AlreadyExists
        {
            output.status(&id, Status::ImageAlreadyPushed);
            self.remember(session.registry().name(), img).await;
            return Ok(false);
        }
        let tarsum = if self.send_tarsum {
            let store = self.store.clone();
            let digest = img.layer.digest.clone();
            let json = img.json.clone();
            Some(
                blocking(move || {
                    let file = store.open_blob(&digest)?;
                    let reader = haul_store::decompressing_reader(
                        std::io::BufReader::with_capacity(256 * 1024, file),
                        haul_oci::Compression::Gzip,
                    )
                    .map_err(|e| Error::Decompress(e.to_string()))?;
                    tarsum_v0(reader, &json).map_err(|e| Error::Decompress(e.to_string()))
                })
                .await?,
            )
        } else {
            None
        };

        let path = self.store.blob_path(&img.layer.digest);
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
        let checksum = Arc::new(Mutex::new(Some(PayloadChecksum::new(&img.json))));
        let total = img.layer.size;
        let body = {
            let checksum = Arc::clone(&checksum);
            let output = Arc::clone(output);
            let id = id.clone();
            let mut sent = 0u64;
            let mut last = 0u64;
            tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024).map(move |chunk| {
                let chunk = chunk?;
                if let Some(c) = lock(&checksum).as_mut() {
                    c.update(&chunk);
                }
                sent += chunk.len() as u64;
                if sent == total || sent >= last + 512 * 1024 || last == 0 {
                    last = sent;
                    output.status(&id, Status::Pushing(Counts::of(sent, total)));
                }
                Ok::<Bytes, std::io::Error>(chunk)
            })
        };
        session.put_layer(endpoint, &img.id, body).await?;
        let payload = lock(&checksum)
            .take()
            .ok_or_else(|| Error::Internal("payload checksum taken twice".into()))?
            .finish();
        session
            .put_checksum(endpoint, &img.id, &payload, tarsum.as_deref())
            .await?;
        self.remember(session.registry().name(), img).await;
        output.status(&id, Status::ImageSuccessfullyPushed);
        Ok(true)
    }

    /// Records that `img.id` on `registry` is this layer.
    async fn remember(&self, registry: &str, img: &V1Image) {
        let store = self.store.clone();
        let (registry, id) = (registry.to_string(), img.id.clone());
        let layer = V1Layer {
            diff_id: img.layer.diff_id.clone(),
            blob: img.layer.digest.clone(),
            size: img.layer.size,
        };
        if let Err(e) = blocking(move || Ok(store.set_v1_layer(&registry, &id, &layer)?)).await {
            tracing::warn!("cannot record v1 image {}: {e}", img.id);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The v1 image list of an image: dependency images for all layers but the
/// top one, then the top image.
fn v1_images(
    layers: &[ImageLayer],
    config: &[u8],
    image_id_hex: &str,
) -> Result<Vec<V1Image>, String> {
    let Some((top, below)) = layers.split_last() else {
        return Err("an image without layers cannot be pushed with the v1 protocol".into());
    };
    let mut images = Vec::with_capacity(layers.len());
    let mut parent: Option<String> = None;
    for layer in below {
        let id = layer.chain_id.hex().to_string();
        let json = match &parent {
            Some(p) => format!(r#"{{"id":"{id}","parent":"{p}"}}"#),
            None => format!(r#"{{"id":"{id}"}}"#),
        };
        images.push(V1Image {
            id: id.clone(),
            json: Bytes::from(json),
            layer: layer.clone(),
            top: false,
        });
        parent = Some(id);
    }
    let json = v1_config(config, image_id_hex, parent.as_deref())?;
    images.push(V1Image {
        id: image_id_hex.to_string(),
        json: Bytes::from(json),
        layer: top.clone(),
        top: true,
    });
    Ok(images)
}

/// Docker's `MakeV1ConfigFromConfig`: the image config without the fields
/// v1 did not have, with `id` and `parent`; keys sorted as Go wrote them.
fn v1_config(config: &[u8], id: &str, parent: Option<&str>) -> Result<Vec<u8>, String> {
    let mut map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(config)
        .map_err(|e| format!("the image config is unreadable: {e}"))?;
    for key in ["rootfs", "history", "os.version", "os.features"] {
        map.remove(key);
    }
    map.insert("id".into(), id.into());
    match parent {
        Some(p) => {
            map.insert("parent".into(), p.into());
        }
        None => {
            map.remove("parent");
        }
    }
    serde_json::to_vec(&map).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use haul_oci::Digest;

    fn layer(n: u8, parent: Option<&Digest>) -> ImageLayer {
        let diff = Digest::sha256_of(&[n]);
        ImageLayer {
            digest: Digest::sha256_of(&[n, n]),
            media_type: haul_oci::media_type::DOCKER_LAYER_GZIP.into(),
            size: 2,
            chain_id: haul_store::chain_id(parent, &diff),
            diff_id: diff,
        }
    }

    #[test]
    fn v1_list_has_dependency_images_by_chain_id_and_the_top_by_image_id() {
        let l1 = layer(1, None);
        let l2 = layer(2, Some(&l1.chain_id));
        let l3 = layer(3, Some(&l2.chain_id));
        let config = br#"{"architecture":"amd64","os":"linux","config":{"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":[]},"history":[]}"#;
        let images = v1_images(&[l1.clone(), l2.clone(), l3.clone()], config, "ff").unwrap();
        let ids: Vec<&str> = images.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, [l1.chain_id.hex(), l2.chain_id.hex(), "ff"]);
        assert_eq!(
            images[1].json,
            format!(
                r#"{{"id":"{}","parent":"{}"}}"#,
                l2.chain_id.hex(),
                l1.chain_id.hex()
            )
        );
        let top: serde_json::Value = serde_json::from_slice(&images[2].json).unwrap();
        assert_eq!(top["id"], "ff");
        assert_eq!(top["parent"], l2.chain_id.hex());
        assert_eq!(top["config"]["Cmd"][0], "sh");
        assert!(top.get("rootfs").is_none() && top.get("history").is_none());
        assert_eq!(images[2].layer, l3);
        assert!(images[2].top && !images[0].top);
    }
}
