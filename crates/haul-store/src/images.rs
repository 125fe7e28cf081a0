//! Image records: `ROOT/images/sha256/MANIFESTHEX.json`, one per image
//! manifest, keyed by the manifest digest.
//!
//! The image ID (the config digest, as Docker shows it) is a field, not the
//! key: two manifests of one config (the same image recompressed, or
//! pushed as Docker and as OCI) are two records, each kept by the
//! references that name it.

use haul_oci::{media_type, Digest, ImageConfig, ParsedManifest, Platform};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil::{now_unix, read_json, remove_file_if_exists, write_json};
use crate::layers::chain_id;
use crate::Store;

/// One layer of an image as the store records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageLayer {
    /// Digest of the (usually compressed) blob the manifest names.
    pub digest: Digest,
    /// The blob's media type.
    pub media_type: String,
    /// The blob's size in bytes.
    pub size: u64,
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    /// Chain ID of this layer and those beneath.
    pub chain_id: Digest,
}

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The image ID: digest of the config.
    pub id: Digest,
    /// The config blob's media type.
    pub config_media_type: String,
    /// The config blob's size.
    pub config_size: u64,
    /// Digest of the platform-specific image manifest.
    pub manifest_digest: Digest,
    /// Its media type (OCI or Docker schema 2).
    pub manifest_media_type: String,
    /// Its size.
    pub manifest_size: u64,
    /// The platform from the config.
    pub platform: Platform,
    /// Layers, base first.
    pub layers: Vec<ImageLayer>,
    /// The config's `created`, if it has one.
    #[serde(default)]
    pub created: Option<String>,
    /// When the record was stored, in seconds since the Unix epoch.
    #[serde(default)]
    pub added: u64,
    /// Whether haul wrote the manifest (a docker-archive brings none, a
    /// schema 1 image is converted, a push compressed plain layers): no
    /// registry served these bytes, so a push may compress its plain tar
    /// layers instead of keeping the digest.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub manifest_made_locally: bool,
}

impl ImageRecord {
    /// Builds the record of an image from its manifest and config, pairing
    /// the manifest's layer descriptors with the config's diff IDs.
    pub fn from_parts(manifest: &ParsedManifest, config: &ImageConfig) -> Result<ImageRecord> {
        let id = config.digest().clone();
        let invalid = |reason: String| Error::InvalidImage {
            id: id.clone(),
            reason,
        };
        let image = manifest.manifest();
        let config_descriptor = image.config().ok_or_else(|| {
            invalid(format!(
                "manifest {} ({}) has no config",
                manifest.digest(),
                manifest.media_type()
            ))
        })?;
        let descriptor_digest = Digest::try_from(config_descriptor.digest())
            .map_err(|e| invalid(format!("config descriptor: {e}")))?;
        if descriptor_digest != id {
            return Err(invalid(format!(
                "manifest {} names config {descriptor_digest}",
                manifest.digest()
            )));
        }
        let descriptors = image.layers().unwrap_or(&[]);
        let diff_ids = config.diff_ids();
        if descriptors.len() != diff_ids.len() {
            return Err(invalid(format!(
                "manifest {} has {} layers but the config lists {} diff IDs",
                manifest.digest(),
                descriptors.len(),
                diff_ids.len()
            )));
        }
        let mut layers = Vec::with_capacity(descriptors.len());
        let mut parent: Option<Digest> = None;
        for (descriptor, diff_id) in descriptors.iter().zip(diff_ids) {
            let digest = Digest::try_from(descriptor.digest())
                .map_err(|e| invalid(format!("layer descriptor: {e}")))?;
            let chain = chain_id(parent.as_ref(), diff_id);
            layers.push(ImageLayer {
                digest,
                media_type: descriptor.media_type().to_string(),
                size: descriptor.size(),
                diff_id: diff_id.clone(),
                chain_id: chain.clone(),
            });
            parent = Some(chain);
        }
        Ok(ImageRecord {
            config_media_type: config_descriptor.media_type().to_string(),
            config_size: config.bytes().len() as u64,
            manifest_digest: manifest.digest().clone(),
            manifest_media_type: manifest.media_type().to_owned(),
            manifest_size: manifest.size(),
            platform: config.platform(),
            layers,
            created: config.config().created().clone(),
            added: now_unix(),
            manifest_made_locally: false,
            id,
        })
    }

    /// A reference target naming this image's manifest, with no index.
    pub fn target(&self) -> crate::RefTarget {
        crate::RefTarget::manifest(self.manifest_digest.clone())
    }

    /// The chain ID of the top layer (`None` for an image without layers).
    pub fn top_chain_id(&self) -> Option<&Digest> {
        self.layers.last().map(|l| &l.chain_id)
    }

    /// Every blob this image needs: manifest, config, layers.
    pub fn blobs(&self) -> Vec<Digest> {
        let mut out = vec![self.manifest_digest.clone(), self.id.clone()];
        out.extend(self.layers.iter().map(|l| l.digest.clone()));
        out
    }

    /// Sum of the layer blobs' sizes (what a pull downloads).
    pub fn compressed_size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

impl Store {
    /// Stores (or replaces) the record of an image manifest. Its manifest and config blobs
    /// must be in the store (layer blobs need not be: a layer found by its
    /// diff ID is not downloaded; see [`Store::missing_blobs`]). References
    /// are added separately with [`Store::tag`].
    pub fn put_image(&self, image: &ImageRecord) -> Result<()> {
        for digest in [&image.manifest_digest, &image.id] {
            if !self.has_blob(digest) {
                return Err(Error::BlobNotFound {
                    digest: digest.clone(),
                });
            }
        }
        if !media_type::is_manifest(&image.manifest_media_type)
            || media_type::is_schema1(&image.manifest_media_type)
        {
            return Err(Error::InvalidImage {
                id: image.id.clone(),
                reason: format!(
                    "manifest media type {} is not an OCI or Docker schema 2 image manifest",
                    image.manifest_media_type
                ),
            });
        }
        // A pull of an image that is present writes nothing (the record
        // keeps the time it was first stored).
        if let Ok(Some(stored)) = self.get_image(&image.manifest_digest) {
            let unchanged = ImageRecord {
                added: image.added,
                ..stored
            } == *image;
            if unchanged {
                return Ok(());
            }
        }
        // The layers it names were registered without a sync of their own.
        self.sync_layers()?;
        let _lock = self.lock_metadata()?;
        write_json(
            &self.tmp_dir(),
            &self.image_path(&image.manifest_digest),
            image,
        )?;
        let refs = self.load_refs()?;
        if self.live_manifests(&refs)?.contains(&image.manifest_digest) {
            self.write_index_json(&refs)?;
        }
        Ok(())
    }

    /// The image record of this manifest, if stored.
    pub fn get_image(&self, manifest: &Digest) -> Result<Option<ImageRecord>> {
        read_json(&self.image_path(manifest))
    }

    /// Every image record (any order); unreadable or misfiled records are
    /// left out.
    pub fn list_image_records(&self) -> Result<Vec<ImageRecord>> {
        let mut out = Vec::new();
        for name in crate::sorted_names(&self.images_dir())? {
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            let Ok(manifest) = Digest::new(haul_oci::Algorithm::Sha256, hex) else {
                continue;
            };
            // A record that cannot be read, or is not filed under its own
            // manifest, is garbage (gc removes it), not a reason to refuse
            // the whole store.
            if let Ok(Some(image)) = self.get_image(&manifest) {
                if image.manifest_digest == manifest {
                    out.push(image);
                }
            }
        }
        Ok(out)
    }

    /// The blobs of `image` that are not in the content store.
    pub fn missing_blobs(&self, image: &ImageRecord) -> Vec<Digest> {
        image
            .blobs()
            .into_iter()
            .filter(|d| !self.has_blob(d))
            .collect()
    }

    /// The layers of `image` (chain IDs) that are not registered.
    pub fn missing_layers(&self, image: &ImageRecord) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for layer in &image.layers {
            if self.get_layer(&layer.chain_id)?.is_none() {
                out.push(layer.chain_id.clone());
            }
        }
        Ok(out)
    }

    /// Deletes the record of an image manifest; callers hold the store lock.
    pub(crate) fn delete_image_record(&self, manifest: &Digest) -> Result<()> {
        remove_file_if_exists(&self.image_path(manifest))
    }
}

impl Store {
    /// Removes record files [`Store::list_image_records`] leaves out;
    /// returns how many. Callers hold the store lock.
    pub(crate) fn remove_unreadable_records(&self) -> Result<u64> {
        let mut removed = 0;
        let dir = self.images_dir();
        for name in crate::sorted_names(&dir)? {
            let path = dir.join(&name);
            let readable = name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|hex| Digest::new(haul_oci::Algorithm::Sha256, hex).ok())
                .is_some_and(|manifest| {
                    matches!(read_json::<ImageRecord>(&path), Ok(Some(image)) if image.manifest_digest == manifest)
                });
            if !readable && path.is_file() {
                remove_file_if_exists(&path)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}
