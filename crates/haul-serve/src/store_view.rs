//! Every lookup the server makes in the store, in one place: which
//! repositories and tags exist, which manifest a tag serves, manifests by
//! digest, blobs, and referrers. The rest of the crate sees only this
//! module's answers, never the store's reference model.
//!
//! All methods are blocking file I/O: call them from `spawn_blocking`.
//!
//! What a tag serves: the index (manifest list) it was pulled through when
//! that index is stored and every manifest it lists is stored whole (its
//! config and layers too, as after `pull --all-platforms`); otherwise the
//! platform manifest the reference names. An image with a blob missing
//! (a layer found by its diff ID under another blob and never downloaded)
//! is not served, as `content/index.json` does not name it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::SystemTime;

use haul_oci::{media_type, parse_manifest, Digest, Reference};
use haul_store::{Error as StoreError, Store};

use crate::error::Result;

/// Most bytes a manifest may have to be read into memory.
pub(crate) const MANIFEST_LIMIT: u64 = haul_oci::manifest::DEFAULT_MANIFEST_LIMIT as u64;

/// A manifest or index as stored: its exact bytes and media type.
#[derive(Debug, Clone)]
pub(crate) struct StoredManifest {
    /// Digest of `bytes`.
    pub(crate) digest: Digest,
    /// The media type to send as `Content-Type`.
    pub(crate) media_type: String,
    /// The exact stored bytes.
    pub(crate) bytes: Vec<u8>,
}

/// What a tag serves: the preferred document (the index when complete),
/// and the platform manifest for clients that do not accept indexes.
#[derive(Debug, Clone)]
pub(crate) struct TagManifests {
    /// The index when complete, else the platform manifest.
    pub(crate) preferred: StoredManifest,
    /// The platform manifest the reference names.
    pub(crate) platform: StoredManifest,
}

/// A read-only view of a store for serving.
#[derive(Debug)]
pub(crate) struct StoreView {
    store: Store,
    referrers: Mutex<Option<ReferrersCache>>,
}

/// Referrers by subject digest, valid while the blob directory's
/// modification time is `stamp` (every blob committed renames a file into
/// that directory, which changes it).
#[derive(Debug)]
struct ReferrersCache {
    stamp: Option<SystemTime>,
    by_subject: BTreeMap<Digest, Vec<serde_json::Value>>,
}

impl StoreView {
    /// A view of `store`.
    pub(crate) fn new(store: Store) -> Self {
        StoreView {
            store,
            referrers: Mutex::new(None),
        }
    }

    /// The store itself (for leases and ingests).
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// Every tag of every repository: full repository name
    /// (`127.0.0.1:5000/team/app`) -> sorted tags. A repository named only
    /// by digest references has no tags but is listed.
    pub(crate) fn repositories(&self) -> Result<BTreeMap<String, BTreeSet<String>>> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (references, _image) in self.store.list_images()? {
            for reference in references {
                let tags = out.entry(reference.name().to_owned()).or_default();
                if reference.digest().is_none() {
                    if let Some(tag) = reference.tag() {
                        tags.insert(tag.to_owned());
                    }
                }
            }
        }
        Ok(out)
    }

    /// What `repository:tag` serves, if the store has it whole.
    pub(crate) fn manifest_for_tag(
        &self,
        repository: &str,
        tag: &str,
    ) -> Result<Option<TagManifests>> {
        let Ok(reference) = Reference::parse_raw(&format!("{repository}:{tag}")) else {
            return Ok(None);
        };
        let Some(resolved) = self.store.resolve(&reference)? else {
            return Ok(None);
        };
        let image = &resolved.image;
        if !self.store.missing_blobs(image).is_empty() {
            tracing::debug!("{reference}: not served, blobs of it are missing from the store");
            return Ok(None);
        }
        let Some(bytes) = self.read_manifest_bytes(&image.manifest_digest)? else {
            return Ok(None);
        };
        let platform = StoredManifest {
            digest: image.manifest_digest.clone(),
            media_type: image.manifest_media_type.clone(),
            bytes,
        };
        let index = match &resolved.index {
            // The store names the index only when it holds it whole.
            Some(digest) if self.store.complete_index(&resolved.target())?.is_some() => {
                self.manifest_by_digest(digest)?
            }
            _ => None,
        };
        Ok(Some(TagManifests {
            preferred: index.unwrap_or_else(|| platform.clone()),
            platform,
        }))
    }

    /// The manifest or index stored under `digest`, if it is one.
    pub(crate) fn manifest_by_digest(&self, digest: &Digest) -> Result<Option<StoredManifest>> {
        let Some(bytes) = self.read_manifest_bytes(digest)? else {
            return Ok(None);
        };
        let Ok(parsed) = parse_manifest(bytes, None) else {
            return Ok(None);
        };
        if media_type::is_schema1(parsed.media_type()) {
            return Ok(None);
        }
        Ok(Some(StoredManifest {
            digest: digest.clone(),
            media_type: parsed.media_type().to_owned(),
            bytes: parsed.into_bytes(),
        }))
    }

    /// The size of the blob `digest`, if stored.
    pub(crate) fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        match self.store.blob_size(digest) {
            Ok(size) => Ok(Some(size)),
            Err(StoreError::BlobNotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Where the blob `digest` lives.
    pub(crate) fn blob_path(&self, digest: &Digest) -> std::path::PathBuf {
        self.store.blob_path(digest)
    }

    /// Descriptors of the stored manifests whose `subject` is `digest`
    /// (sorted by digest), for the referrers API.
    pub(crate) fn referrers(&self, digest: &Digest) -> Result<Vec<serde_json::Value>> {
        let blob_path = self.store.blob_path(digest);
        let stamp = blob_path
            .parent()
            .and_then(|dir| std::fs::metadata(dir).and_then(|m| m.modified()).ok());
        let mut cache = self.referrers.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = cache
            .as_ref()
            .is_some_and(|c| c.stamp.is_some() && c.stamp == stamp);
        if !fresh {
            *cache = Some(ReferrersCache {
                stamp,
                by_subject: self.scan_referrers()?,
            });
        }
        Ok(cache
            .as_ref()
            .and_then(|c| c.by_subject.get(digest).cloned())
            .unwrap_or_default())
    }

    /// Reads every stored manifest that has a `subject`.
    fn scan_referrers(&self) -> Result<BTreeMap<Digest, Vec<serde_json::Value>>> {
        let mut by_subject: BTreeMap<Digest, Vec<serde_json::Value>> = BTreeMap::new();
        let mut blobs = self.store.list_blobs()?;
        blobs.sort();
        for digest in blobs {
            if !matches!(self.blob_size(&digest)?, Some(size) if size <= MANIFEST_LIMIT) {
                continue;
            }
            let Some(manifest) = self.manifest_by_digest(&digest)? else {
                continue;
            };
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(&manifest.bytes) else {
                continue;
            };
            let Some(subject) = value["subject"]["digest"]
                .as_str()
                .and_then(|d| Digest::parse(d).ok())
            else {
                continue;
            };
            let artifact_type = value["artifactType"]
                .as_str()
                .or_else(|| value["config"]["mediaType"].as_str())
                .map(str::to_owned);
            let mut descriptor = serde_json::json!({
                "mediaType": manifest.media_type,
                "digest": digest,
                "size": manifest.bytes.len(),
            });
            if let Some(t) = artifact_type {
                descriptor["artifactType"] = t.into();
            }
            if value["annotations"].is_object() {
                descriptor["annotations"] = value["annotations"].clone();
            }
            by_subject.entry(subject).or_default().push(descriptor);
        }
        Ok(by_subject)
    }

    /// The bytes of a blob small enough to be a manifest, checked against
    /// its digest; `None` when absent or too large.
    fn read_manifest_bytes(&self, digest: &Digest) -> Result<Option<Vec<u8>>> {
        match self.store.read_blob_limited(digest, MANIFEST_LIMIT) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(StoreError::BlobNotFound { .. } | StoreError::BlobTooLarge { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}
