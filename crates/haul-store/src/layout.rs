//! Where everything lives under the root, and the OCI image layout in
//! `ROOT/content/` (`oci-layout`, `index.json`, `blobs/ALG/HEX`).
//!
//! `content/index.json` is derived data: it is rewritten from `refs.json`
//! and the image records, under the store lock, whenever a reference or an
//! image changes. It lists one descriptor per reference (the exact
//! manifest or index the reference resolved to), annotated
//! with `org.opencontainers.image.ref.name` (and containerd's
//! `io.containerd.image.name`) set to the reference's full normalised form,
//! e.g. `docker.io/library/alpine:latest` or
//! `localhost:5000/app@sha256:…`. skopeo (1.9) splits `oci:DIR:REF` at the
//! first `:` and umoci (0.4) accepts the same, so
//! `skopeo inspect oci:ROOT/content:docker.io/library/alpine:latest` and
//! `umoci unpack --image ROOT/content:docker.io/library/alpine:latest B`
//! read the store directly. (The root path itself must therefore contain no
//! `:` for those tools.)

use std::collections::BTreeMap;
use std::path::PathBuf;

use haul_oci::Digest;
use serde_json::json;

use crate::error::Result;
use crate::fsutil::write_json;
use crate::images::ImageRecord;
use crate::refs::RefTarget;
use crate::Store;

/// The annotation naming a reference in an OCI layout's `index.json`.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's annotation for the full image name, written alongside.
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// Media type of `index.json`.
const OCI_INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";

impl Store {
    /// `ROOT/content`: the OCI image layout.
    pub fn content_dir(&self) -> PathBuf {
        self.root.join("content")
    }

    pub(crate) fn blobs_dir(&self, algorithm: &str) -> PathBuf {
        self.content_dir().join("blobs").join(algorithm)
    }

    pub(crate) fn index_json_path(&self) -> PathBuf {
        self.content_dir().join("index.json")
    }

    pub(crate) fn ingest_dir(&self) -> PathBuf {
        self.root.join("ingest")
    }

    pub(crate) fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }

    pub(crate) fn layer_dir(&self, chain_id: &Digest) -> PathBuf {
        self.layers_dir()
            .join(chain_id.algorithm().as_str())
            .join(chain_id.hex())
    }

    pub(crate) fn images_dir(&self) -> PathBuf {
        self.root.join("images").join("sha256")
    }

    /// The record of the image whose manifest is `manifest`.
    pub(crate) fn image_path(&self, manifest: &Digest) -> PathBuf {
        self.root
            .join("images")
            .join(manifest.algorithm().as_str())
            .join(format!("{}.json", manifest.hex()))
    }

    pub(crate) fn refs_path(&self) -> PathBuf {
        self.root.join("refs.json")
    }

    pub(crate) fn distribution_dir(&self) -> PathBuf {
        self.root.join("distribution")
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// `ROOT/trash`: entries made unreachable by one rename, deleted after.
    pub(crate) fn trash_dir(&self) -> PathBuf {
        self.root.join("trash")
    }

    pub(crate) fn store_lock_path(&self) -> PathBuf {
        self.root.join("store.lock")
    }

    pub(crate) fn gc_lock_path(&self) -> PathBuf {
        self.root.join("gc.lock")
    }

    /// Rewrites `content/index.json` from the references and image records,
    /// leaving out images with a blob missing. A reference that came
    /// through an index names the index when every platform it lists is
    /// stored whole, else its own platform's manifest. Callers hold the
    /// store lock.
    pub(crate) fn write_index_json(&self, refs: &BTreeMap<String, RefTarget>) -> Result<()> {
        let mut manifests = Vec::new();
        for (name, target) in refs {
            // A digest reference names only what hashes to its digest (a
            // single platform pulled through an index is not the index).
            let named_digest = haul_oci::Reference::parse_raw(name)
                .ok()
                .and_then(|r| r.digest().cloned());
            let names = |digest: &Digest| named_digest.as_ref().is_none_or(|d| d == digest);
            let annotations = json!({
                ANNOTATION_IMAGE_NAME: name,
                ANNOTATION_REF_NAME: name,
            });
            if let Some(index) = self
                .complete_index(target)?
                .filter(|_| target.index.as_ref().is_some_and(names))
            {
                manifests.push(json!({
                    "mediaType": index.1,
                    "digest": target.index,
                    "size": index.0,
                    "annotations": annotations,
                }));
                continue;
            }
            let Some(image) = self
                .complete_image(&target.manifest)?
                .filter(|image| names(&image.manifest_digest))
            else {
                continue;
            };
            let mut descriptor = json!({
                "mediaType": image.manifest_media_type,
                "digest": image.manifest_digest,
                "size": image.manifest_size,
                "annotations": annotations,
            });
            if !image.platform.os.is_empty() && !image.platform.architecture.is_empty() {
                descriptor["platform"] =
                    serde_json::to_value(&image.platform).expect("a platform always serialises");
            }
            manifests.push(descriptor);
        }
        let index = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX_MEDIA_TYPE,
            "manifests": manifests,
        });
        write_json(&self.tmp_dir(), &self.index_json_path(), &index)
    }

    /// The record of `manifest` when every blob it needs is stored: the
    /// layout names only images it holds whole, so that a reader such as
    /// skopeo finds every blob an entry needs.
    pub(crate) fn complete_image(&self, manifest: &Digest) -> Result<Option<ImageRecord>> {
        Ok(self
            .get_image(manifest)?
            .filter(|image| self.missing_blobs(image).is_empty()))
    }

    /// The size and media type of the target's index, when it has one and
    /// every image it lists is stored whole.
    pub fn complete_index(&self, target: &RefTarget) -> Result<Option<(u64, String)>> {
        let Some(index) = &target.index else {
            return Ok(None);
        };
        let Some(parsed) = self.read_index(index)? else {
            return Ok(None);
        };
        for entry in parsed.manifest().manifests().unwrap_or_default() {
            let Ok(child) = Digest::try_from(entry.digest()) else {
                return Ok(None);
            };
            if self.complete_image(&child)?.is_none() {
                return Ok(None);
            }
        }
        Ok(Some((parsed.size(), parsed.media_type().to_string())))
    }
}
